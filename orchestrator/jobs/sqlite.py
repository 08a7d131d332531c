"""The embedded job store: SQLite in WAL mode in the data directory, media beside it.

Nothing to install and safe for any number of threads and processes on one host; SQLite's file
locks are not reliable on network filesystems, so several hosts need the PostgreSQL store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.jobs.store import FINISHED, MAX_ATTEMPTS, Job, JobState, JobStore, orphaned

_STATES = ", ".join(f"'{state}'" for state in JobState)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({_STATES})),
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
    report TEXT NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
"""
_ACTIVE = (JobState.QUEUED, JobState.RUNNING)


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["request"] = json.loads(values["request"])
    values["report"] = json.loads(values["report"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


class SQLiteJobStore(JobStore):
    """Job records in `<data>/jobs.sqlite3`, media in `<data>/jobs/<id>/`."""

    def __init__(self, data_dir: Path):
        super().__init__(Path(data_dir) / "jobs")
        self.path = Path(data_dir) / "jobs.sqlite3"
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

    def create(self, job_id: str, kind: str, request: dict) -> Job:
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, state, request, created_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, kind, JobState.QUEUED, json.dumps(request), now),
            )
        return Job(job_id, kind, JobState.QUEUED, request, now)

    def get(self, job_id: str) -> Job | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list(self, *, limit: int, offset: int, state: JobState | None = None) -> tuple[list[Job], int]:
        where, parameters = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._connect() as db:
            total = db.execute(f"SELECT COUNT(*) FROM jobs {where}", parameters).fetchone()[0]
            rows = db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                (*parameters, limit, offset),
            ).fetchall()
        return [_job(row) for row in rows], total

    def counts(self) -> dict[JobState, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in JobState} | {JobState(state): count for state, count in rows}

    def claim(self, worker: str) -> Job | None:
        now = time.time()
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET state = ?, worker = ?, started_at = ?, heartbeat = ?, "
                "attempts = attempts + 1, frames_done = 0 "
                "WHERE id = (SELECT id FROM jobs WHERE state = ? ORDER BY created_at, rowid LIMIT 1) "
                "RETURNING *",
                (JobState.RUNNING, worker, now, now, JobState.QUEUED),
            ).fetchone()
        return None if row is None else _job(row)

    def beat(self, job_id: str, worker: str, frames_done: int, frames_total: int) -> bool:
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET heartbeat = ?, frames_done = ?, frames_total = ? "
                "WHERE id = ? AND worker = ? AND state = ? RETURNING cancel_requested",
                (time.time(), frames_done, frames_total, job_id, worker, JobState.RUNNING),
            ).fetchone()
        return row is None or bool(row["cancel_requested"])

    def end(self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, report = ? "
                "WHERE id = ? AND worker = ? AND state = ?",
                (
                    state,
                    time.time(),
                    result,
                    error,
                    json.dumps(report or {}),
                    job_id,
                    worker,
                    JobState.RUNNING,
                ),
            )

    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, worker = NULL, heartbeat = NULL, error = ? "
                "WHERE id = ? AND worker = ? AND state = ?",
                (JobState.QUEUED, reason, job_id, worker, JobState.RUNNING),
            )

    def request_cancel(self, job_id: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = 'cancelled' WHERE id = ? AND state = ?",
                (JobState.CANCELLED, time.time(), job_id, JobState.QUEUED),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = ?", (job_id, JobState.RUNNING)
            )

    def remove(self, job_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM jobs WHERE id = ? AND state NOT IN (?, ?)", (job_id, *_ACTIVE))

    def recover(self, host: str) -> list[str]:
        now = time.time()
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, worker, heartbeat, attempts FROM jobs WHERE state = ?", (JobState.RUNNING,)
            ).fetchall()
        lost = [row for row in rows if orphaned(row["worker"], row["heartbeat"], host, now)]
        for row in lost:
            with self._write() as db:
                if row["attempts"] < MAX_ATTEMPTS:
                    db.execute(
                        "UPDATE jobs SET state = ?, worker = NULL, heartbeat = NULL, "
                        "error = 'resumed: the service stopped while it ran' WHERE id = ? AND worker = ?",
                        (JobState.QUEUED, row["id"], row["worker"]),
                    )
                else:
                    db.execute(
                        "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND worker = ?",
                        (
                            JobState.FAILED,
                            now,
                            f"the service stopped while it ran, {row['attempts']} times",
                            row["id"],
                            row["worker"],
                        ),
                    )
        return [row["id"] for row in lost]

    def expire_records(self, older_than: float) -> list[str]:
        with self._write() as db:
            rows = db.execute(
                "UPDATE jobs SET state = ?, result = NULL "
                "WHERE state IN (?, ?, ?) AND finished_at < ? RETURNING id",
                (JobState.EXPIRED, *FINISHED, older_than),
            ).fetchall()
        return [row["id"] for row in rows]
