"""The service while its Triton is stopped and started again: queued jobs stay queued, a running job
waits and runs again, synchronous requests get a fast 503 with Retry-After and the fix; none is lost.
A real Triton on fixed loopback ports (stopped and started again on the same ones), a real service."""

from __future__ import annotations

import time

import pytest

from modelplane.local_server import LocalTriton, free_port
from tests.helpers.service import FAST, create_job, problem, started_services, upload, wait_job


@pytest.fixture
def own_triton(repository, tmp_path):
    server = LocalTriton(
        repository,
        state_dir=tmp_path / "triton",
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    server.start()
    yield server
    server.stop()


def test_jobs_wait_for_triton_through_a_restart_and_none_is_lost(own_triton, service_clips, tmp_path):
    with started_services(own_triton.grpc_url, tmp_path) as start:
        service = start(workers=1, triton_wait_seconds=300)
        clip = ("clip.mp4", service_clips["long"].read_bytes())
        running = create_job(service.http, upload(target=clip), FAST)["id"]
        queued = create_job(service.http)["id"]
        wait_job(service.http, running, ("running",), check=lambda job: (job["frames_done"] or 0) > 0)

        own_triton.stop()
        time.sleep(1.5)  # past the verdict taken while it stopped ("not ready")
        started = time.monotonic()
        response = service.http.post("/v1/swap", files=upload())
        assert time.monotonic() - started < 1.5  # refused at once, not after retries
        problem(response, 503, f"Triton at {own_triton.grpc_url} is not reachable", "triton_local.sh start")
        assert int(response.headers["retry-after"]) > 0
        ready = service.http.get("/readyz")
        assert ready.status_code == 503 and "is not reachable" in ready.json()["detail"]
        during = create_job(service.http)["id"]
        time.sleep(4)  # longer than a job's retries of transient faults
        states = {
            job: service.http.get(f"/v1/jobs/{job}").json()["state"] for job in (running, queued, during)
        }
        assert states == {running: "running", queued: "queued", during: "queued"}, states

        own_triton.start()
        for job in (running, queued, during):
            assert wait_job(service.http, job, timeout=300)["error"] is None
        assert (
            service.http.get(f"/v1/jobs/{running}").json()["frames_done"]
            == service.http.get(f"/v1/jobs/{running}").json()["frames_total"]
        )
        log = service.log.read_text()
        assert f"job {running} paused" in log and f"job {running} resumed" in log


def test_a_running_job_fails_with_the_reason_after_the_bounded_wait(own_triton, service_clips, tmp_path):
    with started_services(own_triton.grpc_url, tmp_path) as start:
        service = start(workers=1, triton_wait_seconds=2)
        clip = ("clip.mp4", service_clips["long"].read_bytes())
        job_id = create_job(service.http, upload(target=clip), FAST)["id"]
        wait_job(service.http, job_id, ("running",), check=lambda job: (job["frames_done"] or 0) > 0)
        own_triton.stop()
        job = wait_job(service.http, job_id, ("failed",), timeout=60)
        assert f"Triton at {own_triton.grpc_url} is not reachable" in job["error"]
        assert "waited 2 s" in job["error"] and job["result_url"] is None
        assert f"job {job_id} failed: Triton at" in service.log.read_text()
