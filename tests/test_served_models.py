"""Several swappers and enhancers served at once by a real Triton, chosen per request by the CLI's,
the API's and the pipeline's `swapper` / `enhancer` options; `GET /v1/models`; the containers'
environment choosing them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from modelplane.__main__ import main as modelplane_main
from modelplane.local_server import running_server
from orchestrator.errors import InputError
from orchestrator.images import read_image
from orchestrator.options import SwapOptions
from orchestrator.served import served_models
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from tests.helpers.deployment import STUB
from tests.helpers.paths import ROOT, SCRFD, TWO_FACES
from tests.helpers.service import create_job, problem, started_services, upload, wait_job

SWAPPERS = ("inswapper", "hyperswap", "uniface")
ENHANCERS = ("gfpgan", "codeformer")


def prepare_arguments(repository: Path, models: Path) -> list[str]:
    return [
        "prepare", "--twins", "--detector", str(SCRFD), "--repository", str(repository),
        "--models-dir", str(models), "--swapper-family", ",".join(SWAPPERS),
        "--enhancer-family", ",".join(ENHANCERS),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def several(tmp_path_factory):
    root = tmp_path_factory.mktemp("several")
    assert modelplane_main(prepare_arguments(root / "repository", root / "models")) == 0
    with running_server(root / "repository", root / "triton") as server:
        client = TritonClient(server.grpc_url)
        yield server, client
        client.close()


def inferences(server, model: str) -> int:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"]
        return sum(int(s.get("inference_count", 0)) for s in stats)
    finally:
        client.close()


@pytest.mark.triton
def test_every_served_model_is_listed_with_role_family_size_and_readiness(several):
    _, client = several
    listed = {(m.role, m.model or m.ensemble): m for m in served_models(client, everything=True)}
    assert all(m.ready for m in listed.values())
    swappers = [m for m in listed.values() if m.role == "swapper"]
    assert [(m.family, m.default, m.ensemble) for m in swappers] == [
        ("inswapper", True, "face_swap"),
        ("hyperswap", False, "face_swap__hyperswap_twin"),
        ("uniface", False, "face_swap__uniface_twin"),
    ]
    assert [m.size for m in swappers] == [128, 256, 256]
    assert listed[("swapper", "hyperswap_twin")].latent_model == "swap_latent__hyperswap_twin"
    assert listed[("swapper", "uniface_twin")].source == "image"
    enhancers = [m for m in listed.values() if m.role == "enhancer"]
    assert [(m.family, m.default, m.size) for m in enhancers] == [
        ("gfpgan", True, 512),
        ("codeformer", False, 512),
    ]
    assert (
        listed[("detector", "face_detect")].size == 640 and listed[("recognizer", "face_embed")].size == 112
    )


@pytest.mark.triton
@pytest.mark.parametrize("swapper", ["hyperswap_twin", "uniface_twin"])
def test_a_request_chooses_its_swapper_and_enhancer(several, swapper):
    server, client = several
    frame = read_image(TWO_FACES).frame
    chosen = FaceSwapper(client, SwapOptions(swapper=swapper, enhancer="codeformer_twin", enhance=True))
    ensembles = (f"face_swap__{swapper}", "face_enhance__codeformer_twin", "face_swap", "face_enhance")
    before = {name: inferences(server, name) for name in ensembles}
    faces = chosen.find_faces([frame])
    result = chosen.swap_frames([frame], faces, chosen.identity([TWO_FACES]))[0]
    after = {name: inferences(server, name) for name in ensembles}
    assert after[ensembles[0]] - before[ensembles[0]] == 2  # both faces, by the chosen swapper
    assert after[ensembles[1]] - before[ensembles[1]] == 2
    assert after["face_swap"] == before["face_swap"] and after["face_enhance"] == before["face_enhance"]
    default = FaceSwapper(client, SwapOptions(enhance=True))
    other = default.swap_frames([frame], faces, default.identity([TWO_FACES]))[0]
    assert np.abs(result.astype(int) - other.astype(int)).mean() > 0.5  # another model, another result


@pytest.mark.triton
def test_an_unknown_swapper_is_refused_naming_the_served_ones(several):
    _, client = several
    swapper = FaceSwapper(client, SwapOptions(swapper="hyperswap_9"))
    with pytest.raises(InputError) as caught:
        swapper.identity([TWO_FACES])
    assert str(caught.value) == (
        "no swapper named 'hyperswap_9' is served (served: inswapper_twin, hyperswap_twin, uniface_twin)"
    )


@pytest.mark.triton
def test_the_api_lists_the_models_and_swaps_and_runs_jobs_with_the_chosen_ones(several, tmp_path):
    server, _ = several
    with started_services(server.grpc_url, tmp_path) as start:
        service = start()
        listed = service.http.get("/v1/models")
        assert listed.status_code == 200, listed.text
        models = {(m["role"], m["model"]): m for m in listed.json()["models"] if m["model"]}
        assert models[("swapper", "hyperswap_twin")]["family"] == "hyperswap"
        assert models[("enhancer", "codeformer_twin")]["ready"] is True
        before = inferences(server, "face_swap__hyperswap_twin")
        data = {
            "swapper": "hyperswap_twin",
            "enhancer": "codeformer_twin",
            "enhance": "true",
            "enhance_weight": "0.2",
        }
        response = service.http.post("/v1/swap", files=upload(), data=data)
        assert response.status_code == 200, response.text
        assert inferences(server, "face_swap__hyperswap_twin") - before == 2
        refused = service.http.post("/v1/swap", files=upload(), data={"enhancer": "gpen_bfr_9"})
        problem(refused, 422, "no enhancer named 'gpen_bfr_9' is served", "codeformer_twin")
        before = inferences(server, "face_swap__uniface_twin")
        job = wait_job(service.http, create_job(service.http, data={"swapper": "uniface_twin"})["id"])
        assert job["swapped"] == 2 and inferences(server, "face_swap__uniface_twin") - before == 2
        refused = service.http.post("/v1/jobs", files=upload(), data={"swapper": "nope"})
        problem(refused, 422, "no swapper named 'nope' is served")  # refused before it is queued


@pytest.mark.triton
def test_the_cli_swaps_with_the_chosen_swapper(several, tmp_path):
    server, _ = several
    before = inferences(server, "face_swap__uniface_twin")
    output = tmp_path / "swapped.png"
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "swap", "--source", str(TWO_FACES), "--target", str(TWO_FACES),
         "--output", str(output), "--swapper", "uniface_twin"],
        env={**os.environ, "FACESWAP_TRITON_URL": server.grpc_url}, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert output.is_file() and inferences(server, "face_swap__uniface_twin") - before == 2


def test_the_containers_environment_serves_several_swappers(tmp_path):
    stub, recorded = tmp_path / "tritonserver", tmp_path / "tritonserver.args"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESWAP_", "TRITON_"))}
    twins = tmp_path / "twins"
    assert modelplane_main(prepare_arguments(tmp_path / "scratch", twins)) == 0  # the twin files to hand over
    env.update(
        MODEL_DIR=str(tmp_path / "models"),
        TRITONSERVER=str(stub),
        STUB_ARGS=str(recorded),
        PYTHON=sys.executable,
        TRITON_RENDERING="cpu",
        FACESWAP_DETECTOR=str(SCRFD),
        FACESWAP_RECOGNIZER=str(twins / "twins" / "recognizer_twin.onnx"),
        FACESWAP_SWAPPER=",".join(
            str(twins / "twins" / f"{f}_twin.onnx") for f in ("inswapper", "hyperswap")
        ),
        FACESWAP_SWAPPER_FAMILY="inswapper,hyperswap",
        FACESWAP_ENHANCER=str(twins / "twins" / "codeformer_twin.onnx"),
        FACESWAP_ENHANCER_FAMILY="codeformer",
    )
    entrypoint = ROOT / "docker" / "triton-entrypoint.sh"
    result = subprocess.run([str(entrypoint)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    repository = tmp_path / "models" / "repository"
    assert (repository / "face_swap__hyperswap_twin" / "config.pbtxt").is_file()
    assert 'string_value: "codeformer"' in (repository / "face_enhance" / "config.pbtxt").read_text()
    assert recorded.read_text().splitlines()[0] == f"--model-repository={repository}"
