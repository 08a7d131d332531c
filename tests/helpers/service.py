"""The HTTP service as a real process (`python -m orchestrator serve` on a loopback port), and its use."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from orchestrator.jobs.postgres import PostgresJobStore
from orchestrator.jobs.sqlite import SQLiteJobStore
from orchestrator.jobs.store import OWNER, JobStore
from tests.helpers.paths import ROOT, TWO_FACES

PHOTO = TWO_FACES.read_bytes()
FAST = {"preset": "ultrafast"}  # job fields: the quickest encode
SHORT_FRAMES, LONG_FRAMES = 10, 60  # the frame counts of the `service_clips` fixture's clips
ENDED = ("succeeded", "failed", "cancelled", "expired")


class Service:
    """`python -m orchestrator serve` on a loopback port; `env` holds FACESWAP_* settings.

    Without a `port` the first start binds port 0 and takes the port the server got from its log;
    a restart binds the same port again.
    """

    def __init__(self, triton_url: str, data_dir: Path, env: dict[str, object], port: int | None = None):
        self.triton_url = triton_url
        self.data_dir = data_dir
        self.env = {f"FACESWAP_{key.upper()}": str(value) for key, value in env.items()}
        self.port = port
        self.log = data_dir.parent / f"service-{secrets.token_hex(4)}.log"
        self.process: subprocess.Popen | None = None
        self.http = httpx.Client(timeout=120)

    @property
    def url(self) -> str:
        assert self.port is not None, "the service was never started"
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Service:
        env = {key: value for key, value in os.environ.items() if not key.startswith("FACESWAP_")}
        env.update(self.env)
        command = [sys.executable, "-m", "orchestrator", "serve", "--port", str(self.port or 0)]
        command += ["--triton-url", self.triton_url, "--data-dir", str(self.data_dir)]
        logged = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited with {self.process.returncode}: {self.log_tail()}")
            if self.port is None:
                self.port = self._logged_port(logged)
            if self.port is not None:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                        self.http.base_url = self.url
                        return self
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the service was not up after {timeout} s: {self.log_tail()}")
            time.sleep(0.1)

    def _logged_port(self, offset: int) -> int | None:
        """The port uvicorn says it listens on, in what the log gained past `offset`."""
        with open(self.log, "rb") as log:
            log.seek(offset)
            found = re.search(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read())
        return int(found[1]) if found else None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else "no log"

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()
        self.http.close()

    def assert_no_internal_error(self) -> None:
        """The whole log holds no internal error and no traceback: a module's teardown check, so it
        holds for whichever of the module's tests ran."""
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        assert "internal error" not in log and "Traceback" not in log, log[-5000:]

    # the data folder

    def job_folder(self, job_id: str) -> Path:
        return self.data_dir / "jobs" / job_id

    def files_in(self, job_id: str) -> set[str]:
        folder = self.job_folder(job_id)
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def job_folders(self) -> set[str]:
        return {p.name for p in (self.data_dir / "jobs").iterdir()}

    def scratch_files(self) -> list[Path]:
        """What requests left in the scratch folders (one per process, holding its name)."""
        scratch = self.data_dir / "scratch"
        folders = list(scratch.iterdir()) if scratch.is_dir() else []
        return [path for folder in folders for path in folder.rglob("*") if path.name != OWNER]

    def store(self) -> JobStore:
        """The service's job store, opened directly (close it after use)."""
        url = self.env.get("FACESWAP_DATABASE_URL")
        return PostgresJobStore(url, self.data_dir / "jobs") if url else SQLiteJobStore(self.data_dir)

    def row(self, job_id: str) -> dict:
        """The job's record, read from the store directly."""
        store = self.store()
        try:
            job = store.get(job_id)
        finally:
            store.close()
        assert job is not None, job_id
        return dataclasses.asdict(job)


@contextlib.contextmanager
def started_services(triton: str, folder: Path, **defaults) -> Iterator[Callable[..., Service]]:
    """`start(data_dir=None, triton_url=None, **settings)` starts a service (data in `folder/data`
    by default, Triton at `triton`, `defaults` beneath its settings); every one is stopped at the end."""
    started: list[Service] = []

    def start(data_dir: Path | None = None, triton_url: str | None = None, **env) -> Service:
        service = Service(triton_url or triton, data_dir or folder / "data", {**defaults, **env})
        started.append(service)
        return service.start()

    try:
        yield start
    finally:
        for service in started:
            service.close()


def upload(
    target: tuple[str, bytes] | None = ("target.jpg", PHOTO),
    source: tuple[str, bytes] | None = ("source.jpg", PHOTO),
    reference: tuple[str, bytes] | None = None,
) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart files for httpx; the content type a client claims is never trusted, so any will do."""
    files = []
    for field, value in (("source", source), ("target", target), ("reference", reference)):
        if value is not None:
            files.append((field, (value[0], value[1], "application/octet-stream")))
    return files


def problem(response: httpx.Response, status: int, *fragments: str):
    """Assert an error response: the status, JSON `detail` naming each fragment, no stack trace."""
    assert response.status_code == status, (response.status_code, response.text[:2000])
    assert response.headers["content-type"] == "application/json", response.headers
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text
    assert str(ROOT) not in response.text and "/pytest-" not in response.text, (
        response.text
    )  # no server paths
    detail = response.json()["detail"]
    text = detail if isinstance(detail, str) else json.dumps(detail)
    for fragment in fragments:
        assert fragment in text, (fragment, detail)
    return detail


def invalid_fields(detail) -> set[str]:
    """The fields a validation error names: its detail reads `field: message; field: message`."""
    assert isinstance(detail, str), detail
    return {problem.split(": ", 1)[0].rsplit(".", 1)[-1] for problem in detail.split("; ")}


def create_job(http: httpx.Client, files=None, data=None, headers=None) -> dict:
    response = http.post("/v1/jobs", files=files or upload(), data=data or {}, headers=headers)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["attempts"] == 0 and job["result_url"] is None
    return job


def wait_job(
    http: httpx.Client,
    job_id: str,
    until=("succeeded",),
    timeout: float = 120,
    headers=None,
    check=None,
    fail_on=ENDED,
) -> dict:
    """Poll a job until its state is in `until` (and `check(job)` holds); fail at a state in `fail_on`."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/v1/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job = response.json()
        if job["state"] in until and (check is None or check(job)):
            return job
        assert job["state"] not in fail_on or job["state"] in until, job
        assert time.monotonic() < deadline, f"still {job['state']} after {timeout} s: {job}"
        time.sleep(0.1)
