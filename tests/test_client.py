"""orchestrator.client against the real service (real HTTP, Triton, ffmpeg): a swap, a video job
followed through its events and downloaded, models, faces, a live session, a refusal, and the
retries of a 503 after its Retry-After."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from modelplane.local_server import free_port
from orchestrator.client import ApiError, FaceSwapClient
from orchestrator.options import SwapOptions, VideoOptions
from tests.helpers.clips import frame_count
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import SHORT_FRAMES, Service


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("client") / "data", {}).start()
    yield service
    service.close()


@pytest.fixture
def client(service):
    with FaceSwapClient(service.url) as client:
        yield client


def test_swap_sends_the_typed_options(client):
    swapped = client.swap([TWO_FACES], TWO_FACES, SwapOptions(selector="one"), output_format="png")
    assert (swapped.faces_found, swapped.faces_swapped, swapped.media_type) == (2, 1, "image/png")
    image = cv2.imdecode(np.frombuffer(swapped.image, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == cv2.imread(str(TWO_FACES)).shape
    assert not np.array_equal(image, cv2.imread(str(TWO_FACES)))


def test_a_video_job_is_followed_through_its_events_and_downloaded(client, service_clips, tmp_path):
    job = client.submit([TWO_FACES], service_clips["short"], video=VideoOptions(preset="ultrafast"))
    assert job.state == "queued" and job.kind == "video"
    seen: list[dict] = []
    ended = client.wait(job.id, on_progress=seen.append)
    assert ended.state == "succeeded" and ended.error is None, ended
    assert seen and seen[-1]["frames_done"] == SHORT_FRAMES
    result = client.download(job.id, tmp_path / "swapped.mp4")
    assert frame_count(result) == SHORT_FRAMES
    assert [p.name for p in tmp_path.iterdir()] == ["swapped.mp4"]  # no partial file left
    assert job.id in {listed.id for listed in client.jobs(state="succeeded")}
    client.cancel(job.id)  # a finished job: deleted
    with pytest.raises(ApiError) as gone:
        client.job(job.id)
    assert gone.value.status == 404


def test_models_faces_and_live(client):
    roles = {model["role"] for model in client.models()["models"]}
    assert {"detector", "swapper"} <= roles
    faces = client.faces(TWO_FACES)["faces"]
    assert len(faces) == 2 and all(face["id"] for face in faces)
    assert client.live_info()["max_sessions"] >= 1
    frame = TWO_FACES.read_bytes()
    with client.live([TWO_FACES], detect_every=1) as session:
        header, swapped = session.swap(frame)
    assert header["type"] == "frame" and header["faces"] == 2
    assert cv2.imdecode(np.frombuffer(swapped, np.uint8), cv2.IMREAD_COLOR) is not None


def test_a_refusal_is_an_api_error_with_the_services_detail(client, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("a shopping list\n")
    with pytest.raises(ApiError) as refused:
        client.swap([TWO_FACES], notes)
    assert refused.value.status == 415 and "target 'notes.jpg'" in refused.value.detail


def test_a_503_is_retried_after_its_retry_after(start_service):
    closed = f"127.0.0.1:{free_port()}"
    service = start_service(triton_url=closed)
    with FaceSwapClient(service.url, retries=1) as client:
        began = time.monotonic()
        with pytest.raises(ApiError) as refused:
            client.swap([TWO_FACES], TWO_FACES)
        waited = time.monotonic() - began
    assert refused.value.status == 503 and f"Triton at {closed} is not reachable" in refused.value.detail
    assert 5 <= waited < 10, waited  # one retry, after the 5 s the service asked for
