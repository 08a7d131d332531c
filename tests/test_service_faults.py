"""The service through the faults of its job store and its disk: a locked database, a full disk, a
process killed during an upload, a worker that hangs. Real HTTP, a real Triton, real ffmpeg.

Each case checks the responses while the fault lasts, that nothing is left on disk, and that the
workers still work afterwards (a normal job submitted after the fault succeeds).
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from orchestrator.api.app import create_app
from orchestrator.settings import Settings
from tests.helpers.clips import frame_count
from tests.helpers.disk import fill, tmpfs
from tests.helpers.processes import children_running
from tests.helpers.service import (
    FAST,
    LONG_FRAMES,
    Service,
    create_job,
    problem,
    upload,
    wait_job,
)


def eventually(probe: Callable[[], httpx.Response], check: Callable[[httpx.Response], bool], timeout: float):
    """Call `probe` until `check` holds for its response; that response."""
    deadline = time.monotonic() + timeout
    while not check(response := probe()):
        assert time.monotonic() < deadline, (response.status_code, response.text)
        time.sleep(0.2)
    return response


def ffmpeg_of(service: Service, job_id: str) -> list[psutil.Process]:
    """The service's ffmpeg processes working on a job."""
    return children_running(service.pid, "ffmpeg", argument=str(service.job_folder(job_id)))


def test_a_locked_database_delays_jobs_and_shows_in_readiness(start_service, tmp_path):
    """A writer holding SQLite's lock far longer than the store waits (here 1 s), at start-up too."""
    data = tmp_path / "data"
    service = start_service(data, workers=1, database_timeout=1)
    done = wait_job(service.http, create_job(service.http)["id"])
    with sqlite3.connect(data / "jobs.sqlite3", isolation_level=None) as holder:
        holder.execute("BEGIN IMMEDIATE")
        before = service.job_folders()
        response = service.http.post("/v1/jobs", files=upload())
        problem(response, 503, "job store unavailable: database is locked")
        assert service.job_folders() == before  # the refused job's uploads are gone
        assert service.http.get(f"/v1/jobs/{done['id']}").json()["state"] == "succeeded"  # reads work
        ready = eventually(lambda: service.http.get("/readyz"), lambda r: r.status_code == 503, 15)
        assert "job store unavailable: database is locked" in ready.json()["detail"]
        assert service.http.get("/healthz").status_code == 200
        assert service.stop() == -signal.SIGTERM
        restarted = start_service(data, workers=1, database_timeout=1)  # starts under the lock
        ready = eventually(lambda: restarted.http.get("/readyz"), lambda r: r.status_code == 503, 15)
        assert "database is locked" in ready.json()["detail"]
        holder.execute("ROLLBACK")
    eventually(lambda: restarted.http.get("/readyz"), lambda r: r.status_code == 200, 15)
    job = wait_job(restarted.http, create_job(restarted.http)["id"], timeout=60)
    assert job["attempts"] == 1 and restarted.files_in(job["id"]) == {"result.jpg"}
    log = restarted.log_tail(20000)
    assert "database is locked; retrying" in log and "the job store answers again" in log
    assert "Traceback" not in service.log_tail(20000) + log


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MB tmpfs of the test's own."""
    with tmpfs(tmp_path / "data", 48) as mount:
        yield mount


def test_a_full_disk_refuses_new_jobs_and_fails_the_running_one_once_it_can(
    start_service, service_clips, small_disk
):
    """The running job's encoder cannot write, and neither can the database: the job's failure is
    recorded once there is room again, readiness says why meanwhile, and the next job runs."""
    service = start_service(small_disk, workers=1, max_upload_mb=8)
    target = service_clips["long"]
    running = create_job(service.http, upload(target=("long.mp4", target.read_bytes())), FAST)["id"]
    wait_job(service.http, running, ("running",), 60, check=lambda job: job["frames_done"] > 0)
    filler = fill(small_disk)

    before = service.job_folders()
    problem(service.http.post("/v1/jobs", files=upload()), 507, "the server's disk is full")
    assert service.job_folders() == before
    assert service.http.get(f"/v1/jobs/{running}").json()["state"] == "running"  # reads work
    assert service.http.get("/healthz").status_code == 200

    deadline = time.monotonic() + 120  # the job fails (its output cannot be written at the latest
    while "recording its failure failed" not in service.log_tail(20000):  # at its end), unrecorded
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.2)
    ready = service.http.get("/readyz")
    assert ready.status_code == 503 and "the data directory is full: 0 MiB free" in ready.json()["detail"]
    assert "job store unavailable: database or disk is full" in ready.json()["detail"]

    filler.unlink()
    eventually(lambda: service.http.get("/readyz"), lambda r: r.status_code == 200, 15)
    failed = wait_job(service.http, running, ("failed",), 15)
    assert "No space left on device" in failed["error"], failed
    assert service.files_in(running) == set()  # no inputs, no partial file
    job = wait_job(service.http, create_job(service.http)["id"], timeout=60)
    assert job["attempts"] == 1 and service.files_in(job["id"]) == {"result.jpg"}
    log = service.log_tail(50000)
    assert "recording its failure failed: job store unavailable: database or disk is full" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_process_killed_during_an_upload_leaves_nothing_once_restarted(
    start_service, service_clips, tmp_path, request, database
):
    """kill -9 while the service stores a job's uploads (a folder, no record yet): the next start
    removes the folder, and the next job runs."""
    data = tmp_path / "data"
    env = {"workers": 1}
    if database == "postgres":
        env["database_url"] = request.getfixturevalue("postgres").new_database()
    service = start_service(data, **env)
    files = upload(target=("long.mp4", service_clips["long"].read_bytes()))
    for _ in range(5):  # the window is the upload's probe: caught at the first try, nearly always
        before = service.job_folders()
        post = subprocess.Popen(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{service.url}/v1/jobs"]
            + [f"-F{field}=@{path}" for field, path in _files_on_disk(files, tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not (service.job_folders() - before) and time.monotonic() < deadline:
            time.sleep(0.002)
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(30)
        status = post.communicate(timeout=30)[0]
        cut = service.job_folders() - before
        record = service.store()
        try:
            recorded = [job_id for job_id in cut if record.get(job_id) is not None]
        finally:
            record.close()
        if cut and not recorded:
            break
        service.start()
    else:
        pytest.fail("never killed during an upload")
    assert status == "000"  # the client saw the connection drop, never a half answer
    (job_id,) = cut
    assert service.files_in(job_id)  # what the killed process had stored

    service.start()
    deadline = time.monotonic() + 15
    while service.job_folder(job_id).exists():
        assert time.monotonic() < deadline, service.files_in(job_id)
        time.sleep(0.1)
    assert service.job_folders() == before
    job = wait_job(service.http, create_job(service.http)["id"], timeout=60)
    assert service.files_in(job["id"]) == {"result.jpg"}


def _files_on_disk(files, folder: Path) -> list[tuple[str, Path]]:
    written = []
    for field, (name, content, _) in files:
        path = folder / f"upload-{field}-{Path(name).name}"
        path.write_bytes(content)
        written.append((field, path))
    return written


@pytest.mark.slow
def test_a_hung_worker_is_replaced_and_its_job_runs_again(start_service, service_clips, tmp_path):
    """The job's decoder is stopped (SIGSTOP): its worker hangs on a pipe with no progress. The pool
    replaces the worker, the job runs again on the replacement, and the hung run changes nothing
    once it wakes."""
    # A chunk of frames can take seconds on a busy CPU: a generous bound, for the run after too.
    service = start_service(tmp_path / "data", workers=1, worker_stuck_seconds=15)
    target = service_clips["long"]
    job_id = create_job(service.http, upload(target=("long.mp4", target.read_bytes())), FAST)["id"]
    wait_job(service.http, job_id, ("running",), 60, check=lambda job: job["frames_done"] > 0)
    deadline = time.monotonic() + 30
    while not (decoders := [p for p in ffmpeg_of(service, job_id) if p.cmdline()[-1] == "pipe:1"]):
        assert time.monotonic() < deadline, "no decoder"
        time.sleep(0.05)
    for decoder in decoders:
        decoder.suspend()
    try:
        job = wait_job(service.http, job_id, timeout=180)
    finally:
        for decoder in decoders:
            with contextlib.suppress(psutil.NoSuchProcess):
                decoder.kill()  # the hung run wakes to a closed pipe
    assert job["attempts"] == 2 and job["error"] is None and job["frames_done"] == LONG_FRAMES
    assert "no progress on job" in service.log_tail(50000)
    deadline = time.monotonic() + 30
    while ffmpeg_of(service, job_id):  # the hung run's encoder ends with it
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    assert service.http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded"
    assert service.files_in(job_id) == {"result.mp4"}
    output = tmp_path / "result.mp4"
    output.write_bytes(service.http.get(f"/v1/jobs/{job_id}/result").content)
    assert frame_count(output) == LONG_FRAMES
    assert service.http.get("/readyz").status_code == 200
    assert wait_job(service.http, create_job(service.http)["id"])["attempts"] == 1


def ended(*_args, **_kwargs):
    """What a bug does to a thread: an exception past every `except Exception`."""
    raise SystemExit


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the threads end
def test_health_reports_a_stopped_job_upkeep_then_a_dead_worker(triton, tmp_path, monkeypatch):
    """The upkeep is stopped first, so that nothing replaces the worker that dies next."""
    settings = Settings(
        triton_url=triton.grpc_url, data_dir=tmp_path / "data", workers=1, job_lease_seconds=3
    )
    app = create_app(settings)
    services = app.state.services
    with TestClient(app, base_url="http://localhost") as http:  # a host the service answers to
        assert http.get("/healthz").json() == {"status": "ok"} and http.get("/readyz").status_code == 200
        monkeypatch.setattr(services.store, "expire", ended)  # the upkeep calls it every round
        eventually(lambda: http.get("/healthz"), lambda r: r.status_code == 503, 30)
        assert http.get("/healthz").json() == {"status": "the job upkeep stopped"}
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["detail"] == "the job upkeep stopped"
        assert all(ready.json()["models"].values())  # Triton itself is fine

        monkeypatch.setattr(services.pool, "run", ended)
        create_job(http)
        ready = eventually(lambda: http.get("/readyz"), lambda r: "workers" in r.text, 30)
        assert ready.status_code == 503
        assert ready.json()["detail"] == "the job upkeep stopped; 1 of 1 job workers are not running"
