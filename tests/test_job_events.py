"""`GET /v1/jobs/{id}/events`: a job's progress as server-sent events, read over real HTTP.

The rate and time left are checked against the job's own frame count and running time.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.helpers.clips import frame_count, moving_photo
from tests.helpers.service import Service, create_job, problem, upload, wait_job

FAST = {"preset": "ultrafast"}


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("events") / "data", {}).start()
    yield service
    service.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return moving_photo(
        tmp_path_factory.mktemp("events-clip") / "clip.mp4", size="320x240", seconds=4, rate=8
    )


def events(http: httpx.Client, job_id: str, headers=None) -> list[tuple[str, dict]]:
    """Every event of a job's stream, until the server ends it."""
    received = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                received.append((kind, json.loads(line.removeprefix("data: "))))
    return received


def test_a_video_job_streams_its_progress_rate_and_time_left_until_it_ends(service, clip):
    job = create_job(service.http, upload(target=("clip.mp4", clip.read_bytes())), FAST)
    received = events(service.http, job["id"])
    kinds = [kind for kind, _ in received]
    assert kinds[-1] == "end" and set(kinds[:-1]) == {"progress"}, kinds
    done = [data["frames_done"] for _, data in received]
    assert done == sorted(done)  # frames only go forward
    middle = [data for _, data in received if 0 < data["frames_done"] < data["frames_total"]]
    assert middle, received  # seen while it ran
    for data in middle:
        assert data["state"] == "running" and data["frames_per_second"] > 0
        left = (data["frames_total"] - data["frames_done"]) / data["frames_per_second"]
        assert data["seconds_left"] == pytest.approx(left, abs=0.1)
    final = received[-1][1]
    assert final["state"] == "succeeded" and final["seconds_left"] == 0 and final["progress"] == 1
    assert final["frames_done"] == final["frames_total"] == frame_count(clip)
    status = service.http.get(f"/v1/jobs/{job['id']}").json()
    assert {key: final[key] for key in status} == status  # the job's status, plus the rate and time left
    rate = final["frames_total"] / final["running_seconds"]
    assert final["frames_per_second"] == pytest.approx(rate, rel=0.01)


def test_a_finished_job_ends_its_stream_at_once(service):
    job = create_job(service.http, upload())
    wait_job(service.http, job["id"])
    received = events(service.http, job["id"])
    assert [kind for kind, _ in received] == ["end"]
    assert received[0][1]["state"] == "succeeded" and received[0][1]["result_url"]


def test_a_cancelled_job_ends_its_stream_cancelled(service, clip):
    job = create_job(service.http, upload(target=("clip.mp4", clip.read_bytes())), FAST)
    wait_job(service.http, job["id"], ("running",), 60)
    assert service.http.delete(f"/v1/jobs/{job['id']}").status_code == 202
    received = events(service.http, job["id"])
    assert received[-1][0] == "end" and received[-1][1]["state"] == "cancelled"


def test_unknown_jobs_and_missing_keys_are_refused_before_the_stream(service, triton, tmp_path):
    problem(service.http.get(f"/v1/jobs/{'0' * 32}/events"), 404, "no job")
    secured = Service(triton.grpc_url, tmp_path / "data", {"api_key": "s3cret"}).start()
    try:
        problem(secured.http.get(f"/v1/jobs/{'0' * 32}/events"), 401, "X-API-Key")
        job = create_job(secured.http, upload(), headers={"X-API-Key": "s3cret"})
        received = events(secured.http, job["id"], headers={"X-API-Key": "s3cret"})
        assert received[-1][0] == "end"
    finally:
        secured.close()
