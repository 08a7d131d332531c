"""The CPU rendering runs each ensemble as one model fusing its steps; clients cannot tell it from the
ensemble the GPU rendering runs: same tensors, batching and answers."""

from __future__ import annotations

import json

import pytest
import tritonclient.grpc as grpcclient

from modelplane.configs import CPU_BACKEND, ENSEMBLE_STEPS, from_text
from tests.helpers.triton import ENSEMBLES, assert_same, infer, random_inputs


def configs(repository, name: str):
    directory = repository / name
    return from_text((directory / "config.pbtxt").read_text()), from_text(
        (directory / "configs" / "cpu.pbtxt").read_text()
    )


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_each_ensemble_has_a_fused_cpu_rendering_of_its_steps(repository, ensemble):
    gpu, cpu = configs(repository, ensemble)
    assert gpu.platform == "ensemble" and cpu.backend == CPU_BACKEND
    for field in ("input", "output", "max_batch_size"):
        assert getattr(gpu, field) == getattr(cpu, field), field
    steps = json.loads(cpu.parameters[ENSEMBLE_STEPS].string_value)
    assert [step["model"] for step in steps] == [
        f"../{step.model_name}/1/model.onnx" for step in gpu.ensemble_scheduling.step
    ]
    for fused, step in zip(steps, gpu.ensemble_scheduling.step, strict=True):
        assert fused["inputs"] == dict(step.input_map) and fused["outputs"] == dict(step.output_map)
        assert (repository / step.model_name / "1" / "model.onnx").is_file()
    main = next(s.model_name for s in gpu.ensemble_scheduling.step if not s.model_name.endswith("process"))
    assert cpu.dynamic_batching == configs(repository, main)[1].dynamic_batching


@pytest.fixture(scope="module")
def ensemble_client(ensemble_triton):
    client = grpcclient.InferenceServerClient(ensemble_triton.grpc_url)
    yield client
    client.close()


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_fused_and_ensemble_renderings_look_and_answer_alike(grpc_client, ensemble_client, ensemble):
    fused = grpc_client.get_model_config(ensemble).config
    steps = ensemble_client.get_model_config(ensemble).config
    assert steps.platform == "ensemble" and fused.backend == CPU_BACKEND
    for field in ("input", "output", "max_batch_size"):
        assert getattr(fused, field) == getattr(steps, field), field
    inputs = random_inputs(grpc_client, ensemble, batch=3, seed=11)
    optional = {t.name for t in fused.input if t.optional}
    for given in (inputs, {k: v for k, v in inputs.items() if k not in optional}):
        expected = infer(ensemble_client, ensemble, given)
        got = infer(grpc_client, ensemble, given)
        assert set(got) == set(expected)
        for name in expected:
            assert_same(got[name], expected[name], f"{ensemble}:{name}")
