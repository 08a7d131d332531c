"""Three orchestrator replicas on one real PostgreSQL and one shared data directory, behind a real
nginx with `docker/nginx.conf`'s front door, one real Triton: as several hosts would run them.

The job lease is 3 s here (60 s by default), so that a job lost with its replica runs again soon.
The tests run in order on one cluster; each leaves every replica running.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers.clips import frame_count
from tests.helpers.cluster import Cluster
from tests.helpers.service import (
    ENDED,
    FAST,
    LONG_FRAMES,
    PHOTO,
    SHORT_FRAMES,
    create_job,
    problem,
    upload,
    wait_job,
)

pytestmark = pytest.mark.slow
LEASE = 3.0


@pytest.fixture(scope="module")
def cluster(triton, postgres, tmp_path_factory):
    env = {"workers": 2, "job_lease_seconds": LEASE, "database_timeout": 3, "shutdown_grace_seconds": 1}
    root = tmp_path_factory.mktemp("cluster")
    with Cluster(triton.grpc_url, postgres.new_database(), root, **env) as cluster:
        yield cluster


def submit(cluster: Cluster, jobs: list[tuple[str, bytes]]) -> list[str]:
    """Queue jobs through nginx, eight uploads at a time; their ids."""

    def post(target: tuple[str, bytes]) -> str:
        return create_job(cluster.http, upload(target=target), FAST)["id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(post, jobs))


def finished(cluster: Cluster, ids: list[str], timeout: float = 300) -> dict[str, dict]:
    """Wait until every job has ended; each job's status, by id."""
    deadline, jobs = time.monotonic() + timeout, {}
    while len(jobs) < len(ids):
        for job_id in set(ids) - set(jobs):
            job = cluster.http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in ENDED:
                jobs[job_id] = job
        assert time.monotonic() < deadline, f"{len(ids) - len(jobs)} jobs still running"
        time.sleep(0.3)
    return jobs


def one_result(cluster: Cluster, job: dict) -> None:
    """The job succeeded, and its folder holds its result and nothing else."""
    assert job["state"] == "succeeded", job
    folder = cluster.data / "jobs" / job["id"]
    assert {path.name for path in folder.iterdir()} == {
        f"result.{'mp4' if job['kind'] == 'video' else 'jpg'}"
    }


def test_requests_spread_over_every_replica(cluster):
    before = cluster.counter("faceswap_http_requests_total", method="GET", route="/v1/jobs", status="200")
    for _ in range(30):
        assert cluster.http.get("/v1/jobs").status_code == 200
    after = cluster.counter("faceswap_http_requests_total", method="GET", route="/v1/jobs", status="200")
    served = [b - a for a, b in zip(before, after, strict=True)]
    assert sum(served) == 30 and min(served) >= 5, served


def test_thirty_jobs_through_nginx_finish_exactly_once(cluster, service_clips, tmp_path):
    frames_before = sum(cluster.counter("faceswap_frames_processed_total"))
    clip = service_clips["short"].read_bytes()
    targets = [("photo.jpg", PHOTO)] * 24 + [("clip.mp4", clip)] * 6
    ids = submit(cluster, targets)
    jobs = finished(cluster, ids)
    for job in jobs.values():
        one_result(cluster, job)
        assert job["attempts"] == 1 and job["error"] is None
    # Every frame was processed once, across the replicas: no job ran twice.
    assert sum(cluster.counter("faceswap_frames_processed_total")) - frames_before == 24 + 6 * SHORT_FRAMES
    store = cluster.store()
    try:
        workers = {store.get(job_id).worker for job_id in ids}
    finally:
        store.close()
    assert {cluster.replica_of(worker).port for worker in workers} == {r.port for r in cluster.replicas}
    for job in jobs.values():
        result = cluster.http.get(job["result_url"])
        assert result.status_code == 200 and len(result.content) > 1000
        if job["kind"] == "video":
            (tmp_path / "result.mp4").write_bytes(result.content)
            assert frame_count(tmp_path / "result.mp4") == SHORT_FRAMES


def test_a_killed_replica_s_video_job_finishes_elsewhere_after_the_lease(cluster, service_clips, tmp_path):
    job_id = submit(cluster, [("long.mp4", service_clips["long"].read_bytes())])[0]
    wait_job(cluster.http, job_id, ("running",), 60, check=lambda job: job["frames_done"] > 0)
    store = cluster.store()
    try:
        victim = cluster.replica_of(store.get(job_id).worker)
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.process.wait(30)
        assert any(".part." in name for name in victim.files_in(job_id))  # its encoder's, cut short
        job = wait_job(cluster.http, job_id, timeout=180)
        record = store.get(job_id)
    finally:
        store.close()
    assert job["attempts"] == 2 and job["error"] is None and job["frames_done"] == LONG_FRAMES
    assert cluster.replica_of(record.worker) is not victim
    # It ran again once the lease lapsed: at the earliest a lease after the last renewal (at most
    # about a second before the kill), not at once.
    assert record.started_at - killed_at > LEASE - 1.2, record.started_at - killed_at
    one_result(cluster, job)
    (tmp_path / "result.mp4").write_bytes(cluster.http.get(job["result_url"]).content)
    assert frame_count(tmp_path / "result.mp4") == LONG_FRAMES
    victim.start()


def test_a_restarted_replica_loses_nothing(cluster, service_clips):
    video = submit(cluster, [("long.mp4", service_clips["long"].read_bytes())])[0]
    wait_job(cluster.http, video, ("running",), 60, check=lambda job: job["frames_done"] > 0)
    images = submit(cluster, [("photo.jpg", PHOTO)] * 6)
    store = cluster.store()
    try:
        replica = cluster.replica_of(store.get(video).worker)
    finally:
        store.close()
    assert replica.stop() == -signal.SIGTERM  # its video job goes back to the queue after the grace
    replica.start()
    jobs = finished(cluster, [video, *images])
    for job in jobs.values():
        one_result(cluster, job)
        assert job["error"] is None
    assert jobs[video]["attempts"] == 2 and jobs[video]["frames_done"] == LONG_FRAMES
    assert replica.http.get("/readyz").status_code == 200


def test_a_postgres_restart_mid_run_loses_no_job(cluster, postgres, service_clips):
    clip = service_clips["short"].read_bytes()
    ids = submit(cluster, [("photo.jpg", PHOTO)] * 10 + [("clip.mp4", clip)] * 2)
    wait_job(cluster.http, ids[-1], ("running", "succeeded"), 60)
    postgres.stop()
    try:
        for replica in cluster.replicas:
            ready = replica.http.get("/readyz")
            assert ready.status_code == 503 and "job store unavailable" in ready.json()["detail"]
            assert replica.http.get("/healthz").status_code == 200
            metrics = replica.http.get("/metrics")  # without the job counts only
            assert metrics.status_code == 200 and "faceswap_http_requests_total" in metrics.text
            assert "faceswap_jobs{" not in metrics.text
        before = {path.name for path in (cluster.data / "jobs").iterdir()}
        problem(cluster.http.post("/v1/jobs", files=upload()), 503, "job store unavailable")
        assert {path.name for path in (cluster.data / "jobs").iterdir()} == before
        time.sleep(LEASE)  # down longer than a lease: running jobs may run again, never twice to the end
    finally:
        postgres.start()
    deadline = time.monotonic() + 60
    for replica in cluster.replicas:
        while (ready := replica.http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.5)
    jobs = finished(cluster, ids)
    for job in jobs.values():
        one_result(cluster, job)
        assert job["error"] is None and job["attempts"] <= 2
    assert wait_job(cluster.http, create_job(cluster.http)["id"])["attempts"] == 1


def test_no_replica_logged_an_internal_error(cluster):
    for replica in cluster.replicas:
        log = replica.log.read_text(errors="replace")
        assert "internal error" not in log and "Traceback" not in log, log[-5000:]
    with httpx.Client(base_url=cluster.nginx.url) as http:
        assert http.get("/healthz").status_code == 200
