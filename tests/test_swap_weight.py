"""Identity weight (`swap_weight`): the source embedding moved toward or away from each target face's
own before the swapper's latent is made; checked on arrays and through the session's Triton."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from insightface.data import get_image
from onnx import numpy_helper

from orchestrator.faces.identity import weighted_identity
from orchestrator.options import SwapOptions
from orchestrator.pipeline import FaceSwapper, swap_image
from orchestrator.triton import TritonClient
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import problem, upload


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_the_weight_moves_the_source_within_facefusions_range():
    rng = np.random.default_rng(3)
    source = unit(rng.standard_normal(512)).astype(np.float32)
    targets = rng.standard_normal((4, 512)).astype(np.float32) * 3  # not unit: normalised first
    assert np.array_equal(weighted_identity(source, targets, 0.5), np.repeat(source[None], 4, axis=0))
    # FaceFusion: weight 0 mixes in 0.35 of the target face, weight 1 takes 0.35 of it out
    toward, away = (weighted_identity(source, targets, weight) for weight in (0.0, 1.0))
    assert np.allclose(toward, 0.65 * source + 0.35 * unit(targets), atol=1e-6)
    assert np.allclose(away, 1.35 * source - 0.35 * unit(targets), atol=1e-6)
    closeness = [
        np.mean(np.sum(unit(weighted_identity(source, targets, w)) * unit(targets), axis=1))
        for w in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    assert closeness == sorted(closeness, reverse=True)  # lower weights resemble the target more


class Calls:
    """The models a TritonClient ran inferences on, in order (its `observe` hook)."""

    def __init__(self):
        self.models: list[str] = []

    def __call__(self, model: str, seconds: float) -> None:
        self.models.append(model)


@pytest.fixture
def observed(triton):
    calls = Calls()
    client = TritonClient(triton.grpc_url, observe=calls)
    yield client, calls
    client.close()


def reference_latents(source, targets, weight, swapper_file) -> np.ndarray:
    """FaceFusion's weighting, then the inswapper latent normalize(normalize(v) @ emap), in NumPy."""
    emap = numpy_helper.to_array(onnx.load(str(swapper_file)).graph.initializer[-1]).astype(np.float64)
    shift = 0.35 - 0.7 * weight
    mixed = (1 - shift) * source.astype(np.float64) + shift * unit(targets.astype(np.float64))
    return unit(unit(mixed) @ emap)


def test_the_weight_changes_each_face_latent_and_the_neutral_one_costs_no_call(observed, twin_files):
    client, calls = observed
    frame = get_image("t1")  # six faces, none of them the source's
    neutral = FaceSwapper(client)
    identity = neutral.identity([TWO_FACES])
    faces = neutral.find_faces([frame])
    calls.models.clear()
    same = neutral.face_latents([frame], faces, identity)
    assert calls.models == []  # the neutral weight: no embedding, no latent call per face
    assert same.shape == (6, identity.latent.size) and np.array_equal(same[1], identity.latent)

    for weight in (0.0, 1.0):
        for face in faces[0]:
            face.embedding = None
        swapper = FaceSwapper(client, SwapOptions(swap_weight=weight))
        calls.models.clear()
        latents = swapper.face_latents([frame], faces, identity)
        assert calls.models == ["face_embed", "swap_latent"]  # one batched call each for all faces
        targets = np.stack([face.embedding for face in faces[0]])
        expected = reference_latents(identity.embedding, targets, weight, twin_files["swapper"])
        assert np.abs(latents - expected).max() <= 1e-5
        # measurably moved: toward each face's own latent at 0, away from it at 1
        own = reference_latents(targets, targets, 0.5, twin_files["swapper"])
        moved = np.sum(latents * own, axis=1) - np.sum(identity.latent * own, axis=1)
        assert np.all(moved > 0.02) if weight == 0 else np.all(moved < -0.02)
        assert np.all(np.sum(latents * identity.latent, axis=1) < 0.995)


def test_the_weight_changes_the_swapped_image_and_the_neutral_value_is_the_default(triton_client, tmp_path):
    target = tmp_path / "target.png"
    cv2.imwrite(str(target), get_image("t1"))
    outputs = {}
    for name, options in (
        ("default", SwapOptions()),
        ("neutral", SwapOptions(swap_weight=0.5)),
        ("target-like", SwapOptions(swap_weight=0.0)),
    ):
        outputs[name] = tmp_path / f"{name}.png"
        swap_image(FaceSwapper(triton_client, options), [TWO_FACES], target, outputs[name])
    default, neutral, moved = (cv2.imread(str(outputs[n])).astype(int) for n in outputs)
    assert np.array_equal(default, neutral)
    assert np.abs(moved - neutral).max() > 5


def test_the_cli_and_api_refuse_a_weight_out_of_range(triton, start_service, tmp_path):
    output = tmp_path / "out.png"
    result = run_swap(triton.grpc_url, TWO_FACES, output, "--swap-weight", "1.5")
    assert_one_line_error(result, "swap_weight")
    assert not output.exists()
    weighted = run_swap(triton.grpc_url, TWO_FACES, output, "--swap-weight", "0.2")
    assert weighted.returncode == 0, weighted.stderr
    http = start_service().http
    for path in ("/v1/swap", "/v1/jobs"):
        problem(http.post(path, files=upload(), data={"swap_weight": "-0.1"}), 422, "swap_weight")
    response = http.post("/v1/swap", files=upload(), data={"swap_weight": "0.8"})
    assert response.status_code == 200 and response.headers["x-faces-swapped"] == "2"
