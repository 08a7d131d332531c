"""The prepared repository on a real tritonserver: every model and ensemble, through gRPC."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from insightface.data import get_image
from tritonclient.utils import triton_to_np_dtype

from modelplane.configs import from_text
from orchestrator.faces.detect import faces_of, letterbox
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.triton import ENSEMBLES, assert_same, infer, random_inputs


def model_names(repository) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())


def test_every_model_and_ensemble_is_ready(triton, repository):
    states = {m["name"]: m["state"] for m in triton.models()}
    assert set(ENSEMBLES) <= set(states)
    assert set(states) == set(model_names(repository))
    assert all(state == "READY" for state in states.values()), states


@pytest.mark.parametrize(
    "model",
    [
        "detector",
        "detector_preprocess",
        "detector_postprocess",
        "recognizer",
        "recognizer_preprocess",
        "recognizer_postprocess",
        "swapper",
        "swapper_preprocess",
        "swapper_postprocess",
        "swap_latent",
        "enhancer",
        "enhancer_preprocess",
        "enhancer_postprocess",
        *ENSEMBLES,
    ],
)
def test_batch_8_equals_eight_batch_1_calls(grpc_client, model):
    metadata = {o.name: o for o in grpc_client.get_model_metadata(model).outputs}
    inputs = random_inputs(grpc_client, model, batch=8)
    together = infer(grpc_client, model, inputs)
    singles = [infer(grpc_client, model, {k: v[i : i + 1] for k, v in inputs.items()}) for i in range(8)]
    for name, output in together.items():
        declared = metadata[name]
        assert output.dtype == triton_to_np_dtype(declared.datatype)
        dims = [int(d) for d in declared.shape[1:]]  # -1: the detector's axes that follow its input size
        assert len(dims) == output.ndim - 1 and output.shape[0] == 8
        assert all(d in (-1, size) for d, size in zip(dims, output.shape[1:], strict=True))
        assert_same(output, np.concatenate([single[name] for single in singles]), f"{model}:{name}")


def run_steps_with_onnxruntime(
    repository, ensemble: str, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run an ensemble's steps one by one on the repository's ONNX files with ONNX Runtime."""
    config = from_text((repository / ensemble / "config.pbtxt").read_text())
    tensors = dict(inputs)
    for step in config.ensemble_scheduling.step:
        session = ort.InferenceSession(str(repository / step.model_name / "1" / "model.onnx"))
        feeds = {model_name: tensors[ensemble_name] for model_name, ensemble_name in step.input_map.items()}
        results = session.run(list(step.output_map), feeds)
        tensors.update(zip(step.output_map.values(), results, strict=True))
    return {output.name: tensors[output.name] for output in config.output}


@pytest.mark.parametrize("ensemble", ENSEMBLES)
def test_ensemble_equals_its_steps_run_one_by_one(grpc_client, repository, ensemble):
    inputs = random_inputs(grpc_client, ensemble, batch=3, seed=7)
    got = infer(grpc_client, ensemble, inputs)
    expected = run_steps_with_onnxruntime(repository, ensemble, inputs)
    assert set(got) == set(expected)
    for name in expected:
        assert_same(got[name], expected[name], f"{ensemble}:{name}")


def detect_faces(client, frame: np.ndarray) -> list:
    canvas = np.zeros((640, 640, 3), np.uint8)
    scale = letterbox(frame, canvas)
    return faces_of(infer(client, "face_detect", {"image": canvas[None]}), 0, scale)


@pytest.mark.parametrize(("image", "count"), [("two_faces", 2), ("t1", 6)])
def test_real_scrfd_finds_the_faces_through_face_detect(grpc_client, image, count):
    frame = cv2.imread(str(TWO_FACES)) if image == "two_faces" else get_image("t1")
    faces = detect_faces(grpc_client, frame)
    assert len(faces) == count
    assert all(face.score >= 0.5 for face in faces)


def test_the_documented_direct_client_example_runs(triton, tmp_path):
    """model_repository/README.md points direct clients at this script: it must work as written."""
    output = tmp_path / "swapped.jpg"
    command = [
        sys.executable,
        "scripts/triton_client_example.py",
        str(TWO_FACES),
        str(TWO_FACES),
        str(output),
    ]
    result = subprocess.run(
        [*command, "--url", triton.grpc_url], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    before, after = cv2.imread(str(TWO_FACES)).astype(int), cv2.imread(str(output)).astype(int)
    changed = np.abs(after - before).max(axis=2) > 30
    assert 500 < changed.sum() < 0.3 * changed.size  # one face region changed, not the whole picture
