"""Identity weight (`swap_weight`): the swapper's source latent moved toward or away from each target
face's embedding, as FaceFusion balances it; checked on arrays and through the session's Triton."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from insightface.data import get_image

from orchestrator.faces.identity import balanced_latents
from orchestrator.options import SwapOptions
from orchestrator.pipeline import swap_image
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from tests.helpers.chain import face_sources
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.paths import TWO_FACES
from tests.helpers.reference import InsightFaceReference
from tests.helpers.service import problem, upload


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def facefusion_balance(latent: np.ndarray, targets: np.ndarray, weight: float) -> np.ndarray:
    """FaceFusion's balance_source_embedding in float64: the source vector mixed with each target's."""
    shift = 0.35 - 0.7 * weight
    return (1 - shift) * latent.astype(np.float64)[None] + shift * targets.astype(np.float64)


def test_the_weight_moves_the_latent_within_facefusions_range():
    rng = np.random.default_rng(3)
    latent = rng.standard_normal(512).astype(np.float32)
    targets = unit(rng.standard_normal((4, 512))).astype(np.float32)
    assert np.array_equal(balanced_latents(latent, targets, 0.5), np.repeat(latent[None], 4, axis=0))
    for weight in (0.0, 0.25, 1.0):  # weight 0 mixes in 0.35 of the target face, weight 1 takes 0.35 out
        got = balanced_latents(latent, targets, weight)
        assert got.dtype == np.float32 and np.allclose(
            got, facefusion_balance(latent, targets, weight), atol=1e-6
        )
    closeness = [
        np.mean(np.sum(unit(balanced_latents(latent, targets, w)) * targets, axis=1))
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


def test_the_weight_mixes_each_faces_embedding_into_the_latent_with_no_latent_call(observed, twin_files):
    """The session's swapper is inswapper: its target is the face's unit embedding. The expected
    latents come from InsightFace on the same files: its source latent and its faces' embeddings."""
    client, calls = observed
    frame = get_image("t1")  # six faces, none of them the source's
    reference = InsightFaceReference(twin_files)
    source = reference.largest_face(cv2.imread(str(TWO_FACES))).normed_embedding @ reference.swapper.emap
    source_latent = source / np.linalg.norm(source)
    targets = np.stack([face.normed_embedding for face in reference.faces(frame)])  # best score first
    neutral = FaceSwapper(client)
    identity = neutral.identity([TWO_FACES])
    faces = neutral.find_faces([frame])
    calls.models.clear()
    same = face_sources(neutral, [frame], faces, identity)
    assert calls.models == []  # the neutral weight: no embedding, no latent call per face
    assert same.shape == (6, identity.source.size) and np.array_equal(same[1], identity.source)
    assert len(faces[0]) == len(targets) == 6

    for weight in (0.0, 0.5, 1.0):
        for face in faces[0]:
            face.embedding = face.raw_embedding = None
        swapper = FaceSwapper(client, SwapOptions(swap_weight=weight))
        calls.models.clear()
        latents = face_sources(swapper, [frame], faces, identity)
        if weight == 0.5:
            assert calls.models == [] and np.array_equal(latents, np.broadcast_to(identity.source, (6, 512)))
            continue
        assert calls.models == ["face_embed"]  # one batched call for all faces; the latent is mixed here
        error = np.abs(latents - facefusion_balance(source_latent, targets, weight)).max()
        assert error <= 1e-4
        # a quarter step of weight away is many times that error
        assert np.abs(latents - facefusion_balance(source_latent, targets, abs(weight - 0.25))).max() > 0.01
        assert np.all(np.abs(latents - identity.source).max(axis=1) > 0.01)


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
