"""Durable jobs: a SQLite job store beside the media on disk, and the workers that run the jobs.

A job is a row in `<data>/jobs.sqlite3` and a folder `<data>/jobs/<id>/` holding its uploads
(server-chosen names) and, once done, its result. Workers claim queued jobs atomically, so any
number of worker threads and processes on one host can share the store. A job that was running
when its process died is found by its stale heartbeat (or its dead process id on this host) and
queued again, up to `MAX_ATTEMPTS` runs, then failed with the reason. Results are written
atomically, so a rerun never sees half a file. Finished jobs' media are deleted after the
retention period; the row stays, in state `expired`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

from orchestrator.images import ImageError
from orchestrator.media import MediaError
from orchestrator.pipeline import (
    Cancelled,
    FaceSwapper,
    SwapError,
    SwapOptions,
    VideoOptions,
    swap_image,
    swap_video,
)
from orchestrator.triton import TritonClient, TritonError

log = logging.getLogger(__name__)
EXPECTED_ERRORS = (SwapError, ImageError, MediaError, TritonError)  # the job failed; the service is fine

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "expired")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_ATTEMPTS = 2
STALE_AFTER = 60.0  # seconds without a heartbeat before a running job counts as orphaned
HEARTBEAT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat REAL,
    worker TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    frames_done INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    report TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
"""


@dataclass
class Job:
    id: str
    kind: str  # image | video
    state: str
    request: dict  # stored inputs and options
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat: float | None = None
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    frames_done: int = 0
    frames_total: int = 0
    result: str | None = None  # file name in the job's folder
    error: str | None = None
    report: dict = field(default_factory=dict)

    @property
    def progress(self) -> float:
        if self.state == "succeeded":
            return 1.0
        return self.frames_done / self.frames_total if self.frames_total else 0.0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["request"] = json.loads(values["request"])
        values["report"] = json.loads(values["report"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)


class JobStore:
    """Job records in SQLite (WAL mode), media in one folder per job."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.media = self.data_dir / "jobs"
        self.media.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "jobs.sqlite3"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection per operation: safe from any thread; writers serialise on BEGIN IMMEDIATE."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def folder(self, job_id: str) -> Path:
        return self.media / job_id

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its (empty) media folder, for the uploads before the job is queued."""
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        folder.mkdir()
        return job_id, folder

    def create(self, job_id: str, kind: str, request: dict) -> Job:
        """Queue a job whose uploads are already in its folder."""
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, state, request, created_at) VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(request), now),
            )
        return Job(job_id, kind, "queued", request, now)

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def list(self, *, limit: int, offset: int, state: str | None = None) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total count."""
        where, parameters = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._connect() as db:
            total = db.execute(f"SELECT COUNT(*) FROM jobs {where}", parameters).fetchone()[0]
            rows = db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (*parameters, limit, offset),
            ).fetchall()
        return [Job.from_row(row) for row in rows], total

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {state: count for state, count in rows}

    def claim(self, worker: str) -> Job | None:
        """Atomically take the oldest queued job for `worker`."""
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, started_at = ?, heartbeat = ?, "
                "attempts = attempts + 1, frames_done = 0 "
                "WHERE id = (SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at, rowid LIMIT 1) "
                "RETURNING *",
                (worker, now, now),
            ).fetchone()
        return None if row is None else Job.from_row(row)

    def beat(self, job_id: str, worker: str, frames_done: int, frames_total: int) -> bool:
        """Record progress and liveness; returns whether a cancel was requested."""
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET heartbeat = ?, frames_done = ?, frames_total = ? "
                "WHERE id = ? AND worker = ? AND state = 'running' RETURNING cancel_requested",
                (time.time(), frames_done, frames_total, job_id, worker),
            ).fetchone()
        return row is None or bool(row["cancel_requested"])

    def finish(self, job_id: str, worker: str, state: str, *, result=None, error=None, report=None) -> None:
        """End a running job (if `worker` still owns it) and delete its uploads."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, report = ? "
                "WHERE id = ? AND worker = ? AND state = 'running'",
                (state, time.time(), result, error, json.dumps(report or {}), job_id, worker),
            )
        self._delete_uploads(job_id, keep=result)

    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        """Give a running job back to the queue (service shutting down): it runs again from the start."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', worker = NULL, heartbeat = NULL, error = ? "
                "WHERE id = ? AND worker = ? AND state = 'running'",
                (reason, job_id, worker),
            )

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or ask a running one to stop; None for unknown ids."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = 'cancelled' "
                "WHERE id = ? AND state = 'queued'",
                (time.time(), job_id),
            )
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (job_id,))
        job = self.get(job_id)
        if job is not None and job.state == "cancelled":
            self._delete_uploads(job_id, keep=None)
        return job

    def delete(self, job_id: str) -> None:
        """Remove a finished job: its record and its media."""
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND state NOT IN ('queued', 'running')", (job_id,))
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def recover(self, host: str) -> list[str]:
        """Queue again (or fail) jobs left running by a dead process; returns their ids."""
        now = time.time()
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, worker, heartbeat, attempts FROM jobs WHERE state = 'running'"
            ).fetchall()
        orphaned = [row for row in rows if _orphaned(row["worker"], row["heartbeat"], host, now)]
        for row in orphaned:
            with self._write() as db:
                if row["attempts"] < MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE jobs SET state = 'queued', worker = NULL, heartbeat = NULL, "
                        "error = 'resumed: the service stopped while it ran' WHERE id = ? AND worker = ?",
                        (row["id"], row["worker"]),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? "
                        "WHERE id = ? AND worker = ?",
                        (
                            now,
                            f"the service stopped while it ran, {row['attempts']} times",
                            row["id"],
                            row["worker"],
                        ),
                    )
        return [row["id"] for row in orphaned]

    def expire(self, older_than: float) -> int:
        """Delete the media of jobs finished before `older_than` (epoch seconds); returns how many."""
        with self._write() as db:
            rows = db.execute(
                "UPDATE jobs SET state = 'expired', result = NULL "
                "WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < ? RETURNING id",
                (older_than,),
            ).fetchall()
        for row in rows:
            shutil.rmtree(self.folder(row["id"]), ignore_errors=True)
        return len(rows)

    def _delete_uploads(self, job_id: str, keep: str | None) -> None:
        folder = self.folder(job_id)
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name != keep:
                    path.unlink(missing_ok=True)


def _orphaned(worker: str | None, heartbeat: float | None, host: str, now: float) -> bool:
    """A running job whose worker is a dead process on this host, or silent for too long."""
    if worker is not None and worker.split(":")[0] == host:
        pid = int(worker.split(":")[1])
        with contextlib.suppress(OSError):
            os.kill(pid, 0)
            return heartbeat is None or now - heartbeat > STALE_AFTER
        return True
    return heartbeat is None or now - heartbeat > STALE_AFTER


class Stop(Exception):
    """Raised inside a job when the service shuts down: the job is queued again."""


class WorkerPool:
    """Threads that claim and run jobs, plus upkeep: heartbeats, orphan recovery, retention.

    `run(job, beat)` does a job's work and returns (result file name, report); it calls
    `beat(done, total)`, which returns True once the job's cancellation was requested and raises
    `Stop` when the service shuts down past its grace period.
    """

    def __init__(self, store: JobStore, run: Callable, workers: int, retention: float, poll: float = 0.5):
        self.store = store
        self.run = run
        self.retention = retention
        self.host = socket.gethostname()
        self.workers = [f"{self.host}:{os.getpid()}:{n}" for n in range(workers)]
        self.poll = poll
        self._wake = threading.Event()
        self._stopping = threading.Event()  # claim no more jobs
        self._abandon = threading.Event()  # grace is over: give running jobs back to the queue
        self._threads: list[threading.Thread] = []
        self.running: dict[str, str] = {}  # job id -> worker

    def start(self) -> None:
        self.store.recover(self.host)
        for worker in self.workers:
            thread = threading.Thread(target=self._loop, args=(worker,), name=f"worker-{worker}", daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._maintain, name="job-upkeep", daemon=True).start()

    def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""
        self._wake.set()

    def shutdown(self, grace: float) -> None:
        """Stop claiming; let running jobs finish for `grace` seconds, then queue them again."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self, worker: str) -> None:
        while not self._stopping.is_set():
            job = self.store.claim(worker)
            if job is None:
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            self.running[job.id] = worker
            try:
                self._run(job, worker)
            finally:
                self.running.pop(job.id, None)

    def _run(self, job: Job, worker: str) -> None:
        last = [0.0]

        def beat(done: int, total: int) -> bool:
            if self._abandon.is_set():
                raise Stop()
            if time.monotonic() - last[0] < 1.0 and done < total:
                return False
            last[0] = time.monotonic()
            return self.store.beat(job.id, worker, done, total)

        try:
            result, report = self.run(job, beat)
        except Stop:
            self.store.requeue(job.id, worker, "resumed: the service shut down while it ran")
        except Cancelled:
            self.store.finish(job.id, worker, "cancelled", error="cancelled")
        except Exception as error:  # every failure ends the job with its reason; the service goes on
            if not isinstance(error, EXPECTED_ERRORS):
                log.exception("job %s failed", job.id)
            message = " ".join(str(error).split()) or type(error).__name__
            self.store.finish(job.id, worker, "failed", error=message)
        else:
            self.store.finish(job.id, worker, "succeeded", result=result, report=report)

    def _maintain(self) -> None:
        """Every few seconds: heartbeats of running jobs, orphan recovery, retention."""
        while not self._stopping.wait(HEARTBEAT):
            try:
                for job_id, worker in list(self.running.items()):
                    job = self.store.get(job_id)
                    if job is not None:
                        self.store.beat(job_id, worker, job.frames_done, job.frames_total)
                if self.store.recover(self.host):
                    self._wake.set()
                self.store.expire(time.time() - self.retention)
            except sqlite3.Error:
                log.exception("job upkeep failed; retrying")


def _fields(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in values.items() if key in names}


def job_runner(triton: TritonClient, max_pixels: int, store: JobStore, frames_done: Callable[[int], None]):
    """The `run` of a WorkerPool: a swap job from its stored request, result written in its folder.

    The request holds file names inside the job's folder (`sources`, `target`, `reference`,
    `output`) and the `options` and `video` settings. `frames_done(n)` counts processed frames.
    """

    def run(job: Job, beat: Callable[[int, int], bool]) -> tuple[str, dict]:
        folder = store.folder(job.id)
        request = job.request
        options = SwapOptions(**_fields(SwapOptions, request["options"]), max_pixels=max_pixels)
        swapper = FaceSwapper(triton, options)
        sources = [folder / name for name in request["sources"]]
        reference = folder / request["reference"] if request.get("reference") else None
        output = folder / request["output"]
        if job.kind == "image":
            report = swap_image(swapper, sources, folder / request["target"], output, reference)
            beat(1, 1)
            frames_done(1)
        else:
            cancel = threading.Event()
            counted = [0]

            def progress(p) -> None:
                frames_done(p.done - counted[0])
                counted[0] = p.done
                if beat(p.done, p.total):
                    cancel.set()

            video = VideoOptions(**_fields(VideoOptions, request.get("video", {})))
            report = swap_video(
                swapper,
                sources,
                folder / request["target"],
                output,
                reference=reference,
                video=video,
                progress=progress,
                cancel=cancel,
            )
        summary = {
            "faces": report.faces,
            "swapped": report.swapped,
            "frames": report.frames,
            "warnings": report.warnings,
            "seconds": {stage: round(value, 3) for stage, value in report.seconds.items()},
        }
        return output.name, summary

    return run
