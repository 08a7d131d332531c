"""The HTTP service over real HTTP: uvicorn on a loopback port, a real Triton, real ffmpeg.

Every test talks with httpx to `python -m orchestrator serve` started as a subprocess, with
FACESWAP_* variables for its settings. One instance serves most tests; the tests that need other
settings (an upload limit, an API key, CORS, short retention, one worker, an unreachable Triton)
start dedicated ones, and the durability tests kill and restart them on the same data folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from modelplane.local_server import free_port
from orchestrator.jobs.store import JobState
from orchestrator.triton import OPTIONAL_MODELS, REQUIRED_MODELS
from tests.helpers.clips import frame_count, video_size
from tests.helpers.memory import PeakMemory
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import (
    ENDED,
    FAST,
    LONG_FRAMES,
    PHOTO,
    SHORT_FRAMES,
    Service,
    create_job,
    invalid_fields,
    problem,
    upload,
    wait_job,
)

PHOTO_SIZE = Image.open(TWO_FACES).size
STATES = tuple(JobState)


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    """The shared instance, default settings."""
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("service") / "data", {}).start()
    try:
        yield service
        service.assert_no_internal_error()
    finally:
        service.close()


# --- helpers


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def changed(data: bytes) -> float:
    """Mean absolute pixel difference between a result image and the target photo."""
    result = np.asarray(decoded(data).convert("RGB"), dtype=int)
    return float(np.abs(result - np.asarray(Image.open(TWO_FACES).convert("RGB"), dtype=int)).mean())


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@contextlib.contextmanager
def busy_worker(service: Service, clip: Path):
    """A long video job holding a one-worker service's only worker; cancelled on exit."""
    blocker = create_job(service.http, upload(target=("long.mp4", clip.read_bytes())), FAST)
    wait_job(service.http, blocker["id"], ("running",), 60, check=lambda job: job["frames_done"] > 0)
    try:
        yield blocker["id"]
    finally:
        if service.http.get(f"/v1/jobs/{blocker['id']}").json()["state"] not in ENDED:
            service.http.delete(f"/v1/jobs/{blocker['id']}")
            wait_job(service.http, blocker["id"], ("cancelled", "succeeded"), 60)


# --- 1. every endpoint


@pytest.mark.parametrize(
    ("output_format", "media_type", "pillow"), [(None, "image/jpeg", "JPEG"), ("png", "image/png", "PNG")]
)
def test_swap_returns_the_swapped_image(service, output_format, media_type, pillow):
    data = {"output_format": output_format} if output_format else {}
    response = service.http.post("/v1/swap", files=upload(), data=data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["x-faces-found"] == "2" and response.headers["x-faces-swapped"] == "2"
    image = decoded(response.content)
    assert image.format == pillow and image.size == PHOTO_SIZE
    assert changed(response.content) > 1  # the faces were replaced
    assert service.scratch_files() == []  # the request's scratch folder is gone


def test_swap_jpeg_quality_sets_the_quantisation_tables(service):
    """The JPEG's tables are the ones libjpeg's quality scaling gives (Pillow writing the same quality)."""
    tables = {}
    for quality in (30, 95):
        response = service.http.post("/v1/swap", files=upload(), data={"jpeg_quality": str(quality)})
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        pillow = io.BytesIO()
        Image.open(TWO_FACES).save(pillow, "JPEG", quality=quality)
        tables[quality] = decoded(response.content).quantization
        assert tables[quality] == decoded(pillow.getvalue()).quantization
    assert tables[30] != tables[95]
    problem(service.http.post("/v1/swap", files=upload(), data={"jpeg_quality": "0"}), 422, "jpeg_quality")


def test_image_job_runs_to_a_result(service):
    created = create_job(service.http)
    assert created["kind"] == "image" and created["progress"] == 0
    job = wait_job(service.http, created["id"])
    assert job["progress"] == 1.0 and job["frames_done"] == job["frames_total"] == 1
    assert job["faces"] == 2 and job["swapped"] == 2 and job["attempts"] == 1 and job["error"] is None
    assert job["queued_seconds"] >= 0 and job["running_seconds"] > 0
    assert job["started_at"] and job["finished_at"] and job["stage_seconds"]
    assert job["result_url"] == f"/v1/jobs/{job['id']}/result"
    result = service.http.get(job["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
    assert f"swapped-{job['id'][:8]}.jpg" in result.headers["content-disposition"]
    assert decoded(result.content).size == PHOTO_SIZE and changed(result.content) > 1
    assert service.files_in(job["id"]) == {"result.jpg"}  # the uploads are deleted once done


def test_video_job_runs_to_a_result(service, service_clips, tmp_path):
    target = service_clips["short"]
    frames = frame_count(target)
    created = create_job(service.http, upload(target=("clip.mp4", target.read_bytes())), FAST)
    assert created["kind"] == "video"
    job = wait_job(service.http, created["id"])
    assert job["progress"] == 1.0 and job["frames_done"] == job["frames_total"] == frames == SHORT_FRAMES
    assert job["swapped"] > 0 and job["attempts"] == 1 and job["running_seconds"] > 0
    assert {"decode", "encode"} <= set(job["stage_seconds"])
    result = service.http.get(job["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
    output = tmp_path / "result.mp4"
    output.write_bytes(result.content)
    assert frame_count(output) == frames and video_size(output) == (320, 240)
    assert service.files_in(job["id"]) == {"result.mp4"}


def test_list_jobs_pages_newest_first_and_filters_by_state(service):
    ids = [create_job(service.http)["id"] for _ in range(3)]
    for job_id in ids:
        wait_job(service.http, job_id)
    everything = service.http.get("/v1/jobs", params={"limit": 200}).json()
    total = everything["total"]
    assert total >= 3 and len(everything["jobs"]) == total
    first = service.http.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in first["jobs"]] == [ids[2], ids[1]]
    assert (first["total"], first["limit"], first["offset"]) == (total, 2, 0)
    second = service.http.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert second["jobs"][0]["id"] == ids[0] and second["offset"] == 2
    assert service.http.get("/v1/jobs", params={"offset": total}).json()["jobs"] == []
    by_state = {}
    for state in STATES:
        page = service.http.get("/v1/jobs", params={"state": state, "limit": 200}).json()
        assert all(job["state"] == state for job in page["jobs"]) and len(page["jobs"]) == page["total"]
        by_state[state] = page["total"]
    assert by_state["succeeded"] >= 3 and sum(by_state.values()) == total
    for params, field in (({"limit": 0}, "limit"), ({"limit": 201}, "limit"), ({"offset": -1}, "offset")):
        assert invalid_fields(problem(service.http.get("/v1/jobs", params=params), 422)) == {field}
    assert invalid_fields(problem(service.http.get("/v1/jobs", params={"state": "bogus"}), 422)) == {"state"}


def test_delete_cancels_queued_and_running_jobs(start_service, service_clips):
    service = start_service(workers=1)
    with busy_worker(service, service_clips["long"]) as running_id:
        queued = create_job(
            service.http, upload(target=("clip.mp4", service_clips["short"].read_bytes())), FAST
        )
        assert service.http.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"
        assert service.files_in(queued["id"]) == {"source-1.jpg", "target.mp4"}
        response = service.http.delete(f"/v1/jobs/{queued['id']}")
        assert response.status_code == 202 and response.json()["state"] == "cancelled"
        assert service.files_in(queued["id"]) == set()  # its uploads are deleted

        response = service.http.delete(f"/v1/jobs/{running_id}")
        assert response.status_code == 202 and response.json()["state"] in ("running", "cancelled")
        job = wait_job(service.http, running_id, ("cancelled",), 30)
        assert job["error"] == "cancelled" and 0 < job["frames_done"] < job["frames_total"] == LONG_FRAMES
    for job_id in (queued["id"], running_id):
        problem(service.http.get(f"/v1/jobs/{job_id}/result"), 409, "the job is cancelled")
        assert service.files_in(job_id) == set()  # no upload, no result, no temporary file
    # a cancelled job is finished: DELETE removes it
    assert service.http.delete(f"/v1/jobs/{running_id}").status_code == 204
    problem(service.http.get(f"/v1/jobs/{running_id}"), 404, "no job")


def test_delete_removes_a_finished_job(service):
    job = wait_job(service.http, create_job(service.http)["id"])
    assert service.job_folder(job["id"]).is_dir()
    response = service.http.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 204 and response.content == b""
    problem(service.http.get(f"/v1/jobs/{job['id']}"), 404, f"no job '{job['id']}'")
    problem(service.http.get(f"/v1/jobs/{job['id']}/result"), 404, "no job")
    problem(service.http.delete(f"/v1/jobs/{job['id']}"), 404, "no job")
    assert not service.job_folder(job["id"]).exists()


def test_healthz(service):
    response = service.http.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_lists_every_model_ready(service):
    response = service.http.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ready": True,
        "models": {name: True for name in (*REQUIRED_MODELS, *OPTIONAL_MODELS)},
        "detail": None,
    }


def test_unreachable_triton_is_503_with_a_useful_detail(start_service):
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    service = start_service(triton_url=closed, triton_retries=0, triton_timeout=5)
    assert service.http.get("/healthz").status_code == 200  # alive, not ready
    response = service.http.get("/readyz")
    assert response.status_code == 503 and response.json()["ready"] is False
    assert f"Triton at {closed}" in response.json()["detail"]
    assert "FACESWAP_TRITON_URL" in response.json()["detail"]  # and what to do about it
    refused = service.http.post("/v1/swap", files=upload())
    problem(refused, 503, f"Triton at {closed} is not reachable")
    assert refused.elapsed.total_seconds() < 1.5 and int(refused.headers["retry-after"]) > 0
    job_id = create_job(service.http)["id"]
    time.sleep(3)  # the job stays queued: no worker claims work it cannot do
    assert service.http.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    log = service.log.read_text()
    assert f"jobs wait in the queue: Triton at {closed} is not reachable" in log
    assert "at its gRPC address; jobs wait in the queue until it takes work" in log  # warned at start


def test_metrics(service):
    assert service.http.post("/v1/swap", files=upload()).status_code == 200
    wait_job(service.http, create_job(service.http)["id"])
    service.http.get("/v1/jobs/0123")
    response = service.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)

    def value(name: str, **labels) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    assert value("faceswap_http_requests_total", method="POST", route="/v1/swap", status="200") >= 1
    assert value("faceswap_http_requests_total", method="POST", route="/v1/jobs", status="202") >= 1
    assert value("faceswap_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="404") >= 1
    routes = {dict(labels)["route"] for name, labels in samples if name == "faceswap_http_requests_total"}
    assert not any(len(part) == 32 for route in routes for part in route.split("/"))  # templates, not ids
    succeeded = service.http.get("/v1/jobs", params={"state": "succeeded"}).json()["total"]
    assert value("faceswap_jobs", state="succeeded") == succeeded >= 1
    assert {dict(labels)["state"] for name, labels in samples if name == "faceswap_jobs"} == set(STATES)
    assert value("faceswap_frames_processed_total") > 0
    assert value("faceswap_triton_request_duration_seconds_count", model="face_swap") > 0
    assert value("faceswap_triton_request_duration_seconds_count", model="face_detect") > 0


# --- 2. bad input


@pytest.mark.parametrize("endpoint", ["/v1/swap", "/v1/jobs"])
@pytest.mark.parametrize("body", ["none", "fields only", "empty multipart"])
def test_no_files_is_422(service, endpoint, body):
    before = service.job_folders()
    if body == "none":
        response = service.http.post(endpoint)
    elif body == "fields only":
        response = service.http.post(endpoint, data={"selector": "many"})
    else:
        response = service.http.post(
            endpoint, content=b"--xyz--\r\n", headers={"content-type": "multipart/form-data; boundary=xyz"}
        )
    assert invalid_fields(problem(response, 422, "Field required")) == {"source", "target"}
    assert service.job_folders() == before


@pytest.mark.parametrize("endpoint", ["/v1/swap", "/v1/jobs"])
@pytest.mark.parametrize("missing", ["target", "source"])
def test_missing_upload_is_422(service, endpoint, missing):
    files = upload(**{missing: None})
    assert invalid_fields(problem(service.http.post(endpoint, files=files), 422)) == {missing}


@pytest.mark.parametrize("endpoint", ["/v1/swap", "/v1/jobs"])
@pytest.mark.parametrize(("field", "name"), [("target", "target"), ("source", "source-1")])
def test_zero_byte_upload_is_422(service, endpoint, field, name):
    before = service.job_folders()
    response = service.http.post(endpoint, files=upload(**{field: ("empty.jpg", b"")}))
    problem(response, 422, f"{name}: the file is empty")
    assert service.job_folders() == before and service.scratch_files() == []


def test_truncated_jpeg_is_422_on_swap_and_a_failed_job(service):
    cut = ("cut.jpg", PHOTO[: len(PHOTO) // 2])
    problem(service.http.post("/v1/swap", files=upload(target=cut)), 422, "target.jpg: cannot decode")
    job = wait_job(service.http, create_job(service.http, upload(target=cut))["id"], ("failed",))
    assert "target.jpg: cannot decode" in job["error"] and job["result_url"] is None
    problem(service.http.get(f"/v1/jobs/{job['id']}/result"), 409, "the job is failed", "cannot decode")
    assert service.files_in(job["id"]) == set()


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
NOISE = np.random.default_rng(7).bytes(40_000)


@pytest.mark.parametrize("content", [PDF, NOISE], ids=["pdf", "noise"])
@pytest.mark.parametrize(
    ("endpoint", "field", "detail"),
    [
        ("/v1/swap", "target", "target 'photo.jpg': not an image this service reads; it reads JPEG"),
        ("/v1/swap", "source", "source-1 'photo.jpg': not an image this service reads; it reads JPEG"),
        ("/v1/jobs", "target", "target 'photo.jpg': not an image or a video this service reads ("),
        ("/v1/jobs", "source", "source-1 'photo.jpg': not an image this service reads"),
        ("/v1/jobs", "reference", "reference 'photo.jpg': not an image this service reads"),
    ],
)
def test_wrong_file_type_is_415(service, content, endpoint, field, detail):
    before = service.job_folders()
    response = service.http.post(endpoint, files=upload(**{field: ("photo.jpg", content)}))
    problem(response, 415, detail)
    assert service.job_folders() == before and service.scratch_files() == []


def test_video_sent_to_swap_is_415(service, service_clips):
    video = ("clip.jpg", service_clips["short"].read_bytes())
    problem(service.http.post("/v1/swap", files=upload(target=video)), 415, "target 'clip.jpg': not an image")
    problem(
        service.http.post("/v1/jobs", files=upload(source=video)), 415, "source-1 'clip.jpg': not an image"
    )


@pytest.fixture(scope="module")
def small(triton, tmp_path_factory):
    """An instance refusing bodies over 1 MB."""
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("small") / "data", {"max_upload_mb": 1})
    yield service.start()
    service.close()


def multipart(boundary: str, parts: list[tuple[str, str, bytes]]) -> bytes:
    body = b""
    for field, name, content in parts:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("endpoint", ["/v1/swap", "/v1/jobs"])
@pytest.mark.parametrize("sent", ["content-length", "chunked"])
def test_too_large_upload_is_413_and_leaves_nothing(small, endpoint, sent):
    before = small.job_folders()
    big = np.random.default_rng(1).bytes(3 * 1024 * 1024)
    body = multipart("b0undary", [("source", "a.jpg", PHOTO), ("target", "big.jpg", big)])
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    if sent == "content-length":
        response = small.http.post(endpoint, content=body, headers=headers)
        assert response.request.headers["content-length"] == str(len(body))
    else:

        def pieces():
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        response = small.http.post(endpoint, content=pieces(), headers=headers)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
    problem(response, 413, "the request body is over the limit of 1 MB")
    assert small.scratch_files() == [] and small.job_folders() == before
    # just under the limit, the body is read and judged by its content
    response = small.http.post(endpoint, files=upload(target=("noise.jpg", big[: 900 * 1024])))
    problem(response, 415, "target 'noise.jpg': not an image")


def test_path_traversal_file_names_are_ignored(start_service, service_clips, tmp_path):
    service = start_service(workers=1)
    outside = [Path("/tmp/x.jpg"), Path("/etc/passwd.jpg"), tmp_path / "x.jpg"]
    existed = {path: path.exists() for path in outside}
    files = upload(
        target=("..\\..\\x.jpg", PHOTO),
        source=("../../etc/passwd.jpg", PHOTO),
        reference=("/tmp/x.jpg", PHOTO),
    )
    response = service.http.post("/v1/swap", files=files)
    assert response.status_code == 200 and response.headers["x-faces-swapped"] == "2"
    with busy_worker(service, service_clips["long"]):
        job = create_job(service.http, files)  # queued behind the busy worker: its uploads stay
        assert service.files_in(job["id"]) == {"source-1.jpg", "target.jpg", "reference.jpg"}
        request = service.row(job["id"])["request"]
        assert request["sources"] == ["source-1.jpg"] and request["target"] == "target.jpg"
        assert request["reference"] == "reference.jpg"
        assert service.http.delete(f"/v1/jobs/{job['id']}").status_code == 202
    for path in outside:
        assert path.exists() == existed[path], path
    written = [p.name for p in tmp_path.rglob("*")]
    assert not {"x.jpg", "passwd.jpg", "..\\..\\x.jpg"} & set(written), written
    everything = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*")}
    assert everything == {"data", service.log.name}  # nothing beside the data folder but the log


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/jobs/{uuid.uuid4().hex}",
        "/v1/jobs/..%2Fx",
        "/v1/jobs/%2E%2E",
        "/v1/jobs/..%2F..%2Fjobs.sqlite3",
        "/v1/jobs/abc",
    ],
)
@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/result"), ("DELETE", "")])
def test_unknown_job_ids_are_404(service, path, method, suffix):
    response = service.http.request(method, path + suffix)
    problem(response, 404)
    if "%2F" not in path:  # one path segment: the id reached the handler, which names it
        problem(response, 404, "no job '")


@pytest.mark.parametrize(
    ("endpoint", "field", "value"),
    [
        ("/v1/swap", "selector", "bogus"),
        ("/v1/swap", "face_index", "-1"),
        ("/v1/swap", "enhance_blend", "101"),
        ("/v1/swap", "mask_blur", "abc"),
        ("/v1/swap", "output_format", "gif"),
        ("/v1/swap", "score_threshold", "0.01"),  # thousands of false faces: minutes of work a frame
        ("/v1/jobs", "crf", "99"),
        ("/v1/jobs", "face_index", "-1"),
        ("/v1/jobs", "enhance_blend", "101"),
        ("/v1/jobs", "preset", "warp9"),
        ("/v1/jobs", "score_threshold", "1"),
        ("/v1/jobs", "start", "-2"),
    ],
)
def test_malformed_options_are_422_naming_the_field(service, endpoint, field, value):
    before = service.job_folders()
    response = service.http.post(endpoint, files=upload(), data={field: value})
    assert invalid_fields(problem(response, 422, value)) == {field}
    assert service.job_folders() == before


@pytest.mark.parametrize("endpoint", ["/v1/swap", "/v1/jobs"])
def test_reference_selector_without_reference_is_422(service, endpoint, service_clips):
    before = service.job_folders()
    response = service.http.post(endpoint, files=upload(), data={"selector": "reference"})
    problem(response, 422, "the reference selector needs a `reference` image")
    assert service.job_folders() == before and service.scratch_files() == []
    if endpoint == "/v1/jobs":  # a video may take its reference from a frame instead
        video = upload(target=("clip.mp4", service_clips["short"].read_bytes()))
        response = service.http.post(endpoint, files=video, data={"selector": "reference"})
        problem(response, 422, "(or, for videos, `reference_frame`)")
        job = create_job(service.http, video, {"selector": "reference", "reference_frame": 0, **FAST})
        assert wait_job(service.http, job["id"])["swapped"] > 0


# --- 3. API key and CORS


@pytest.fixture(scope="module")
def secured(triton, tmp_path_factory):
    """An instance with an API key and one CORS origin."""
    env = {"api_key": "s3cret", "cors_origins": "https://app.example"}
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("secured") / "data", env)
    yield service.start()
    service.close()


def test_api_key_guards_v1_only(secured):
    http = secured.http
    some_id = uuid.uuid4().hex
    calls = [
        ("GET", "/v1/jobs", {}),
        ("GET", f"/v1/jobs/{some_id}", {}),
        ("GET", f"/v1/jobs/{some_id}/result", {}),
        ("DELETE", f"/v1/jobs/{some_id}", {}),
        ("POST", "/v1/swap", {"files": upload()}),
        ("POST", "/v1/jobs", {"files": upload()}),
    ]
    for method, path, extra in calls:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"X-API-Key": "S3CRET"}):
            response = http.request(method, path, headers=headers, **extra)
            problem(response, 401, "a valid X-API-Key header is required")
    assert secured.job_folders() == set()  # nothing stored for a refused request
    key = {"X-API-Key": "s3cret"}
    assert http.get("/v1/jobs", headers=key).status_code == 200
    response = http.post("/v1/swap", files=upload(), headers=key)
    assert response.status_code == 200 and response.headers["x-faces-swapped"] == "2"
    job = create_job(http, headers=key)
    job = wait_job(http, job["id"], headers=key)
    assert http.get(job["result_url"], headers=key).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert http.get(path).status_code == 200, path


def test_cors_is_off_by_default(service):
    origin = {"Origin": "https://app.example"}
    response = service.http.get("/healthz", headers=origin)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = service.http.options("/v1/jobs", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers and preflight.status_code == 405


def test_cors_allows_the_configured_origin_only(secured):
    http = secured.http
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    preflight = http.options("/v1/jobs", headers={"Origin": "https://app.example", **ask})
    assert preflight.status_code == 200, preflight.text  # answered before the API key is asked for
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
    refused = http.options("/v1/jobs", headers={"Origin": "https://evil.example", **ask})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    response = http.get("/v1/jobs", headers={"Origin": "https://app.example", "X-API-Key": "s3cret"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    response = http.get("/v1/jobs", headers={"Origin": "https://evil.example", "X-API-Key": "s3cret"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


# --- 4. durability


@pytest.mark.slow
def test_a_killed_service_resumes_its_running_job(start_service, service_clips, tmp_path):
    data = tmp_path / "data"
    first = start_service(data, workers=1)
    target = service_clips["long"]
    frames = frame_count(target)
    job_id = create_job(first.http, upload(target=("long.mp4", target.read_bytes())), FAST)["id"]
    wait_job(first.http, job_id, ("running",), 60, check=lambda job: job["frames_done"] > 0)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(30)
    row = first.row(job_id)
    assert row["state"] == "running" and row["attempts"] == 1 and row["worker"].endswith(f":{first.pid}:0")
    assert any(name.endswith(".part.mp4") for name in first.files_in(job_id))  # the encoder's, cut short
    folder = str(first.job_folder(job_id))

    def orphans() -> list[psutil.Process]:  # ffmpeg children of the dead service still on the job
        return [
            p for p in psutil.process_iter(["cmdline"]) if any(folder in a for a in p.info["cmdline"] or [])
        ]

    deadline = time.monotonic() + 10
    while orphans():
        assert time.monotonic() < deadline, orphans()
        time.sleep(0.1)

    second = start_service(data, workers=1)
    job = wait_job(second.http, job_id, timeout=180)
    assert job["attempts"] == 2 and job["error"] is None  # queued again as orphaned: its worker is dead
    assert job["frames_done"] == job["frames_total"] == frames
    output = tmp_path / "result.mp4"
    output.write_bytes(second.http.get(job["result_url"]).content)
    assert frame_count(output) == frames
    assert second.files_in(job_id) == {"result.mp4"}  # no .part file of the killed run is left


@pytest.mark.slow
def test_a_gracefully_stopped_service_keeps_its_queued_jobs(start_service, service_clips, tmp_path):
    data = tmp_path / "data"
    first = start_service(data, workers=1, shutdown_grace_seconds=1)
    running = create_job(first.http, upload(target=("long.mp4", service_clips["long"].read_bytes())), FAST)[
        "id"
    ]
    queued = create_job(first.http, upload(target=("short.mp4", service_clips["short"].read_bytes())), FAST)[
        "id"
    ]
    wait_job(first.http, running, ("running",), 60, check=lambda job: job["frames_done"] > 0)
    assert first.http.get(f"/v1/jobs/{queued}").json()["state"] == "queued"
    assert first.stop() == -signal.SIGTERM  # uvicorn shuts down, then re-raises the signal it caught
    assert "Application shutdown complete" in first.log_tail()
    assert first.row(queued)["state"] == "queued" and first.row(queued)["attempts"] == 0
    row = first.row(running)  # past the grace period, the running job went back to the queue
    assert row["state"] == "queued" and row["error"] == "resumed: the service shut down while it ran"

    second = start_service(data, workers=1)
    for job_id, attempts, frames in ((queued, 1, SHORT_FRAMES), (running, 2, LONG_FRAMES)):
        job = wait_job(second.http, job_id, timeout=180)
        assert (job["attempts"], job["frames_done"], job["error"]) == (attempts, frames, None), job
        assert second.files_in(job_id) == {"result.mp4"}


def test_finished_jobs_expire_after_the_retention_period(start_service):
    service = start_service(result_retention_hours=0.0003)  # about 1 s; the upkeep runs every 5 s
    job = wait_job(service.http, create_job(service.http)["id"], ("succeeded", "expired"))
    started = time.monotonic()
    job = wait_job(service.http, job["id"], ("expired",), 15, fail_on=("failed", "cancelled"))
    assert time.monotonic() - started < 15 and job["result_url"] is None
    problem(service.http.get(f"/v1/jobs/{job['id']}/result"), 410, "deleted after the retention period")
    assert not service.job_folder(job["id"]).exists()
    assert service.http.get("/v1/jobs", params={"state": "expired"}).json()["total"] == 1


# --- 5. bounded load


async def load_round(service: Service, clip: bytes, swaps: int = 50, videos: int = 5) -> list[dict]:
    limits = httpx.Limits(max_connections=swaps + videos)
    async with httpx.AsyncClient(base_url=service.url, timeout=300, limits=limits) as http:

        async def swap() -> httpx.Response:
            return await http.post("/v1/swap", files=upload())

        async def video() -> httpx.Response:
            return await http.post("/v1/jobs", files=upload(target=("clip.mp4", clip)), data=FAST)

        responses = await asyncio.gather(*[swap() for _ in range(swaps)], *[video() for _ in range(videos)])
        for response in responses[:swaps]:
            assert response.status_code == 200, response.text
            assert response.headers["x-faces-swapped"] == "2" and len(response.content) > 10_000
        for response in responses[swaps:]:
            assert response.status_code == 202, response.text
        jobs = []
        for response in responses[swaps:]:
            while True:
                job = (await http.get(f"/v1/jobs/{response.json()['id']}")).json()
                if job["state"] in ENDED:
                    break
                await asyncio.sleep(0.2)
            jobs.append(job)
    return jobs


@pytest.mark.slow
def test_bounded_load(service, service_clips):
    """50 concurrent swaps and 5 video jobs, twice: no error, and the service's memory stays bounded.

    1.5 GB is generous: the service holds a Python runtime with NumPy, OpenCV and gRPC (~300 MB),
    at most `sync_concurrency` (4) swaps of a small photo and two video jobs whose frame queues are
    bounded. Growth between rounds over 30 % would be a leak, not a working set.
    """
    clip = service_clips["short"].read_bytes()
    peaks = []
    for _ in range(2):
        with PeakMemory(service.pid) as rss:
            jobs = asyncio.run(load_round(service, clip))
        assert [job["state"] for job in jobs] == ["succeeded"] * 5, jobs
        assert all(job["frames_done"] == SHORT_FRAMES for job in jobs)
        peaks.append(rss.own)
    assert max(peaks) < 1.5 * 1024**3, peaks
    assert peaks[1] < peaks[0] * 1.3, peaks
    assert service.scratch_files() == []


# --- 6. property-based


SCHEMATHESIS_HOOKS = """
import schemathesis

PHOTO = open({photo!r}, "rb").read()


@schemathesis.hook
def map_case(context, case):
    # Real photos as the uploads, so that generated options reach the swap itself. The optional
    # `reference` is described as a string, so Schemathesis would send it as a text field: dropped.
    if case.method == "POST" and isinstance(case.body, dict):
        case.body.pop("reference", None)
        case.body["source"] = [PHOTO]
        case.body["target"] = PHOTO
    return case
"""


def schemathesis_run(service: Service, folder: Path, *options: str, env=None) -> str:
    """`schemathesis run` against the service's OpenAPI document, checking for server errors."""
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{service.url}/openapi.json"]
    command += ["--checks", "not_a_server_error", "--seed", "20240601", "--workers", "1", "--no-color"]
    command += ["--request-timeout", "120", "--generation-database", "none", *options]
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(triton, tmp_path):
    """Every operation with generated input; then both uploads with real photos and valid options."""
    service = Service(triton.grpc_url, tmp_path / "data", {}).start()
    try:
        paths = service.http.get("/openapi.json").json()["paths"]
        total = sum(len(operations) for operations in paths.values())
        report = schemathesis_run(service, tmp_path, "--max-examples", "30")
        assert f"Operations:       {total} selected / {total} total" in report and " passed" in report, report
        hooks = tmp_path / "photo_hooks.py"
        hooks.write_text(SCHEMATHESIS_HOOKS.format(photo=str(TWO_FACES)))
        options = ["--max-examples", "15", "--mode", "positive", "--phases", "fuzzing"]
        options += ["--include-method", "POST"]
        report = schemathesis_run(service, tmp_path, *options, env={"SCHEMATHESIS_HOOKS": str(hooks)})
        posts = sum("post" in operations for operations in paths.values())
        assert f"Operations:       {posts} selected / {total} total" in report, report
        log = service.log.read_text(errors="replace")
        assert '"POST /v1/swap HTTP/1.1" 200' in log and '"POST /v1/jobs HTTP/1.1" 202' in log

        def idle() -> bool:  # the jobs it queued ran: no job failed with an unexpected error
            counts = [service.http.get("/v1/jobs", params={"state": s}).json()["total"] for s in STATES]
            return counts[0] + counts[1] == 0

        deadline = time.monotonic() + 120
        while not idle():
            assert time.monotonic() < deadline, "jobs still queued or running"
            time.sleep(0.5)
        log = service.log.read_text(errors="replace")
        assert "internal error" not in log and "Traceback" not in log, log[-5000:]
    finally:
        service.close()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"start": "3", "end": "1"}, "`end` must come after `start`"),
        ({"container": "webm", "video_codec": "libx264"}, "a webm result needs the libvpx-vp9 codec"),
    ],
)
def test_inconsistent_video_options_are_422(service, data, fragment):
    before = service.job_folders()
    problem(service.http.post("/v1/jobs", files=upload(), data=data), 422, fragment)
    assert service.job_folders() == before
