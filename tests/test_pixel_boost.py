"""Pixel boost: the interleaving on arrays, then through a real Triton with an identity swapper twin (a
256-pixel one, served by this module) and the session's tinting swapper twin (128 pixels)."""

from __future__ import annotations

import json
import time
from contextlib import closing

import cv2
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import numpy_helper
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from modelplane.local_server import running_server
from modelplane.prepare import Options, prepare_repository
from modelplane.twins import identity_swapper, write_twins
from orchestrator.api.live_protocol import CLOSE_BAD_REQUEST
from orchestrator.errors import InputError
from orchestrator.faces.boost import boost_factor, merge, split, swap_boosted
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from tests.helpers.chain import face_sources
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.live import camera_frame, jpeg, live_session, live_url, opening, reply
from tests.helpers.paths import TWO_FACES
from tests.helpers.reference import feathered_box, insightface_crop, paste_whole_frame
from tests.helpers.service import FAST, create_job, problem, upload, wait_job

IDENTITY_SIZE = 256  # the identity twin's crop side: 512, 768 and 1024 fit it, 384 does not

# --- the interleaving, on arrays


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_split_and_merge_are_exact_inverses(k):
    rng = np.random.default_rng(k)
    crops = rng.integers(0, 256, (3, 16 * k, 16 * k, 3), np.uint8)
    parts = split(crops, k)
    assert parts.shape == (3 * k * k, 16, 16, 3)
    assert np.array_equal(merge(parts, k), crops)
    others = rng.integers(0, 256, parts.shape, np.uint8)
    assert np.array_equal(split(merge(others, k), k), others)


def test_each_part_holds_every_kth_pixel_face_by_face():
    k = 3
    crops = np.random.default_rng(0).random((2, 12 * k, 12 * k, 3)).astype(np.float32)
    parts = split(crops, k)
    for face in range(2):
        for i in range(k):
            for j in range(k):
                assert np.array_equal(parts[face * k * k + i * k + j], crops[face, i::k, j::k])


def test_a_boosted_swap_is_one_call_on_all_parts_each_with_its_face_latent():
    k, rng = 2, np.random.default_rng(1)
    crops = rng.integers(0, 200, (3, 8 * k, 8 * k, 3)).astype(np.float32)
    latents = rng.random((3, 4)).astype(np.float32)
    calls = []

    def shade(parts, part_latents):  # a per-pixel function of the crop and its face's latent
        calls.append(len(parts))
        return parts * 0.5 + part_latents[:, :3][:, None, None, :] * 100

    result = swap_boosted(shade, crops, latents, k)
    assert calls == [3 * k * k]
    assert np.allclose(result, crops * 0.5 + latents[:, :3][:, None, None, :] * 100)


def test_the_boost_must_be_a_whole_multiple_of_the_model_size():
    assert boost_factor(None, 128) == 1
    assert [boost_factor(b, 128) for b in (256, 384, 512, 768, 1024)] == [2, 3, 4, 6, 8]
    assert [boost_factor(b, 256) for b in (256, 512, 768, 1024)] == [1, 2, 3, 4]
    for boost, size in ((384, 256), (256, 512), (768, 512)):
        with pytest.raises(InputError, match=f"pixel_boost {boost} is not a multiple of .* size {size}"):
            boost_factor(boost, size)


# --- through Triton


@pytest.fixture(scope="module")
def identity_triton(tmp_path_factory, scrfd):
    """A Triton serving the real SCRFD, the recognizer twin and an identity swapper at 256 pixels."""
    folder = tmp_path_factory.mktemp("identity_twins")
    files = write_twins(folder / "models", scrfd)
    files["swapper"] = folder / "models" / "identity_swapper.onnx"
    onnx.save(identity_swapper(size=IDENTITY_SIZE), str(files["swapper"]))
    del files["enhancer"]
    # a 256-pixel swapper taking the unit embedding: hyperswap's family (inswapper's is 128 only)
    prepare_repository(files, folder / "repository", Options(swapper_family="hyperswap"), twins=True)
    with running_server(folder / "repository", folder / "triton") as server:
        yield server


@pytest.fixture(scope="module")
def identity_client(identity_triton):
    client = TritonClient(identity_triton.grpc_url)
    yield client
    client.close()


def aligned(swapper: FaceSwapper, frame: np.ndarray, side: int):
    """The faces of `frame` and their crops and matrices at `side`, aligned by InsightFace's own
    `estimate_norm` (its template for a multiple of 128 pixels)."""
    faces = swapper.find_faces([frame])[0]
    assert len(faces) == 2
    pairs = [insightface_crop(frame, face.landmarks, side) for face in faces]
    return faces, np.stack([crop for crop, _ in pairs]), [matrix for _, matrix in pairs]


def pasted(frame: np.ndarray, crops: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """The crops pasted back over the whole frame with the feathered box, written in the test."""
    result = frame
    for crop, matrix in zip(crops, matrices, strict=True):
        result = paste_whole_frame(result, crop, feathered_box(crop.shape[0]), matrix)
    return result


@pytest.mark.parametrize("boost", [512, 768, 1024])
def test_an_identity_swapper_returns_the_boosted_crop_unchanged(identity_client, boost):
    frame = cv2.imread(str(TWO_FACES))
    swapper = FaceSwapper(identity_client, SwapOptions(pixel_boost=boost))
    assert swapper.boost == boost // IDENTITY_SIZE
    identity = swapper.identity([TWO_FACES])
    faces, crops, matrices = aligned(swapper, frame, boost)
    latents = face_sources(swapper, [frame], [faces], identity)
    assert np.array_equal(swap_boosted(identity_client.swap, crops, latents, swapper.boost), crops)

    # the pipeline pastes that crop back with the box mask at the boosted size
    (result,) = swapper.swap_frames([frame], [faces], identity)
    assert np.abs(result.astype(int) - pasted(frame, crops, matrices)).max() <= 1


def tinted(crops: np.ndarray, latent: np.ndarray, swapper_file) -> np.ndarray:
    """The swapper twin's tint applied to uint8 BGR crops in NumPy, from the twin file's constants."""
    constants = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(swapper_file)).graph.initializer}
    tint = 1 / (1 + np.exp(-(latent.astype(np.float64) @ constants["colours"])))  # RGB, one per identity
    mix = float(constants["mix"])
    rgb = crops[..., ::-1].astype(np.float64) / 255 * mix + tint * mix
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)[..., ::-1]


def test_a_tinting_swapper_tints_the_face_at_the_boosted_size(triton_client, twin_files):
    frame = cv2.imread(str(TWO_FACES))
    boost = 512
    swapper = FaceSwapper(triton_client, SwapOptions(pixel_boost=boost))
    identity = swapper.identity([TWO_FACES])
    faces, crops, matrices = aligned(swapper, frame, boost)
    expected_crops = tinted(crops, identity.source, twin_files["swapper"])
    latents = face_sources(swapper, [frame], [faces], identity)
    swapped = swap_boosted(triton_client.swap, crops, latents, swapper.boost)
    assert swapped.shape == crops.shape
    assert np.abs(swapped.astype(int) - expected_crops).max() <= 1

    (result,) = swapper.swap_frames([frame], [faces], identity)
    expected = pasted(frame, expected_crops, matrices)
    assert np.abs(result.astype(int) - expected).max() <= 1
    # without the boost the face is swapped at 128 pixels: visibly coarser than the boosted reference
    (plain,) = FaceSwapper(triton_client).swap_frames([frame], [faces], identity)
    assert np.abs(plain.astype(int) - expected).max() > 10


def counts(client: grpcclient.InferenceServerClient, model: str) -> tuple[int, int]:
    """A model's inferences (crops) and executions (batches run) from Triton's statistics, once they
    hold still: Triton records a request's statistics after it has answered it."""

    def read() -> tuple[int, int]:
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    last = read()
    while True:
        time.sleep(0.3)
        now = read()
        if now == last:
            return now
        last = now


# The CPU rendering runs face_swap as one fused model; the GPU rendering's layout (the ensemble of its
# steps) lets the swapper role model count its own batches.
LAYOUTS = {"fused": ("triton", "face_swap"), "ensemble": ("ensemble_triton", "swapper")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_parts_of_all_faces_reach_the_swapper_as_one_batch(request, layout):
    server, model = LAYOUTS[layout]
    url = request.getfixturevalue(server).grpc_url
    frame = cv2.imread(str(TWO_FACES))
    with closing(TritonClient(url)) as client, closing(grpcclient.InferenceServerClient(url)) as stats:
        swapper = FaceSwapper(client, SwapOptions(pixel_boost=512))  # k = 4 on the 128 twin
        identity = swapper.identity([TWO_FACES])
        faces = swapper.find_faces([frame])
        assert len(faces[0]) == 2
        before = counts(stats, model)
        swapper.swap_frames([frame], faces, identity)
        after = counts(stats, model)
    assert after[0] - before[0] == 2 * 16  # every part of both faces went through the swapper ...
    assert after[1] - before[1] == 1  # ... in one batch


# --- refusals


def test_the_cli_refuses_a_boost_the_swapper_size_does_not_divide(identity_triton, tmp_path):
    output = tmp_path / "out.png"
    result = run_swap(identity_triton.grpc_url, TWO_FACES, output, "--pixel-boost", "384")
    assert_one_line_error(result, "pixel_boost 384", "crop size 256")
    assert not output.exists()
    unknown = run_swap(identity_triton.grpc_url, TWO_FACES, output, "--pixel-boost", "300")
    assert unknown.returncode == 2 and "invalid choice: 300" in unknown.stderr and not output.exists()
    boosted = run_swap(identity_triton.grpc_url, TWO_FACES, output, "--pixel-boost", "512")
    assert boosted.returncode == 0, boosted.stderr
    assert "swapped 2 of 2 faces" in boosted.stdout and output.is_file()


def test_the_api_and_live_sessions_refuse_a_boost_the_swapper_size_does_not_divide(
    identity_triton, start_service, service_clips
):
    service = start_service(triton_url=identity_triton.grpc_url)
    http = service.http
    for path in ("/v1/swap", "/v1/jobs"):
        response = http.post(path, files=upload(), data={"pixel_boost": "384"})
        problem(response, 422, "pixel_boost 384", "crop size 256")
        unknown = http.post(path, files=upload(), data={"pixel_boost": "300"})
        problem(unknown, 422, "pixel_boost")
    assert http.get("/v1/jobs").json()["total"] == 0  # nothing was queued
    swapped = http.post("/v1/swap", files=upload(), data={"pixel_boost": "512"})
    assert swapped.status_code == 200 and swapped.headers["x-faces-swapped"] == "2"
    clip = ("short.mp4", service_clips["short"].read_bytes())
    for target, fields in ((upload(), {}), (upload(target=clip), FAST)):  # an image job, a video job
        job = create_job(http, files=target, data={"pixel_boost": "768", **fields})
        assert wait_job(http, job["id"])["swapped"] > 0

    # live sessions: refused at the opening, or swapping at the boosted size
    with connect(live_url(service), open_timeout=30) as connection:
        connection.send(json.dumps(opening(options={"pixel_boost": 384})))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                connection.recv(timeout=60)
    assert closed.value.rcvd.code == CLOSE_BAD_REQUEST and "pixel_boost 384" in closed.value.rcvd.reason
    with live_session(service, options={"pixel_boost": 512}) as (connection, _):
        connection.send(jpeg(camera_frame()))
        assert reply(connection)[0]["swapped"] == 2
