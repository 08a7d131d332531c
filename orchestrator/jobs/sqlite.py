"""The embedded job store: SQLite in WAL mode in the data directory, media beside it.

Nothing to install and safe for any number of threads and processes on one host; SQLite's file
locks are not reliable on network filesystems, so several hosts need the PostgreSQL store. On one
host a job left running by a dead process is also recognised by its process id, before its lease
lapses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from orchestrator.jobs.store import (
    FINISHED,
    LEASE,
    LOST,
    MAX_ATTEMPTS,
    Job,
    JobState,
    JobStore,
    StoreUnavailable,
    process_gone,
)

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
PRAGMA user_version = 1;
"""
SCHEMA_VERSION = 1
_ACTIVE = (JobState.QUEUED, JobState.RUNNING)
_STATUS = ", ".join(  # every column but the request, which statuses never show
    "'{}' AS request" if field.name == "request" else field.name for field in dataclasses.fields(Job)
)
# Release a running job: cancelled if that was asked, else queued again, or failed after MAX_ATTEMPTS
# runs (parameters: now, reason, reason). Every SET expression sees the row as it was.
_AGAIN = f"cancel_requested = 0 AND attempts < {MAX_ATTEMPTS}"
_RELEASE = f"""
UPDATE jobs SET
    state = CASE WHEN cancel_requested THEN '{JobState.CANCELLED}'
        WHEN {_AGAIN} THEN '{JobState.QUEUED}' ELSE '{JobState.FAILED}' END,
    worker = CASE WHEN {_AGAIN} THEN NULL ELSE worker END,
    heartbeat = NULL,
    finished_at = CASE WHEN {_AGAIN} THEN NULL ELSE ? END,
    error = CASE WHEN cancel_requested THEN 'cancelled'
        WHEN {_AGAIN} THEN 'resumed: ' || ? ELSE ? || ', ' || attempts || ' times' END
"""


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["request"] = json.loads(values["request"])
    values["report"] = json.loads(values["report"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Job(**values)


class SQLiteJobStore(JobStore):
    """Job records in `<data>/jobs.sqlite3`, media in `<data>/jobs/<id>/`.

    `timeout` is how long an operation waits for another writer's lock.
    """

    def __init__(self, data_dir: Path, *, lease: float = LEASE, timeout: float = 30.0):
        super().__init__(Path(data_dir) / "jobs", lease)
        self.path = Path(data_dir) / "jobs.sqlite3"
        self.timeout = timeout
        with self._connect() as db:
            # Only a new or older database is written to: a locked current one still opens.
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect in a new database only
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
        # Held open, unused: the WAL files then outlive each operation's connection, so reads need no
        # disk space (they still work on a full disk) and no connection recreates them.
        self._keeper = sqlite3.connect(self.path, check_same_thread=False)
        self._keeper.execute("SELECT COUNT(*) FROM jobs WHERE 0").fetchone()

    @contextlib.contextmanager
    def _connect(self, timeout: float | None = None) -> Iterator[sqlite3.Connection]:
        """A connection per operation: safe from any thread; writers serialise on BEGIN IMMEDIATE."""
        try:
            db = sqlite3.connect(self.path, timeout=timeout or self.timeout, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreUnavailable(error) from error
        db.row_factory = sqlite3.Row
        try:
            yield db
        except sqlite3.OperationalError as error:  # locked, disk full, I/O error
            raise StoreUnavailable(error) from error
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
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def insert(self, job_id: str, kind: str, request: dict) -> Job:
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, state, request, created_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, kind, JobState.QUEUED, json.dumps(request), now),
            )
        return Job(job_id, kind, JobState.QUEUED, request, now)

    def get(self, job_id: str, request: bool = True) -> Job | None:
        with self._connect() as db:
            row = db.execute(
                f"SELECT {'*' if request else _STATUS} FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else _job(row)

    def lookup(self, job_ids: Iterable[str]) -> dict[str, Job]:
        ids, found = list(job_ids), {}
        with self._connect() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for row in db.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", chunk):
                    found[row["id"]] = _job(row)
        return found

    def list(self, *, limit: int, offset: int, state: JobState | None = None) -> tuple[list[Job], int]:
        where, parameters = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._connect() as db:
            total = db.execute(f"SELECT COUNT(*) FROM jobs {where}", parameters).fetchone()[0]
            rows = db.execute(
                f"SELECT {_STATUS} FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
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

    def beat(
        self, job_id: str, worker: str, frames_done: int | None = None, frames_total: int | None = None
    ) -> bool:
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET heartbeat = ?, frames_done = COALESCE(?, frames_done), "
                "frames_total = COALESCE(?, frames_total) "
                "WHERE id = ? AND worker = ? AND state = ? RETURNING cancel_requested",
                (time.time(), frames_done, frames_total, job_id, worker, JobState.RUNNING),
            ).fetchone()
        return row is None or bool(row["cancel_requested"])

    def end(self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None) -> bool:
        with self._write() as db:
            cursor = db.execute(
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
        return cursor.rowcount == 1

    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, worker = NULL, heartbeat = NULL, error = ? "
                "WHERE id = ? AND worker = ? AND state = ?",
                (JobState.QUEUED, reason, job_id, worker, JobState.RUNNING),
            )

    def release_records(self, job_id: str, worker: str, reason: str) -> JobState | None:
        with self._write() as db:
            return self._release(db, job_id, worker, reason)

    @staticmethod
    def _release(
        db: sqlite3.Connection, job_id: str, worker: str, reason: str, *, heartbeat: float | None = None
    ) -> JobState | None:
        """Release a running job of `worker` (and, when given, still at that `heartbeat`)."""
        condition = "WHERE id = ? AND worker = ? AND state = ?"
        parameters: tuple = (time.time(), reason, reason, job_id, worker, JobState.RUNNING)
        if heartbeat is not None:
            condition, parameters = condition + " AND heartbeat = ?", (*parameters, heartbeat)
        row = db.execute(_RELEASE + condition + " RETURNING state", parameters).fetchone()
        return None if row is None else JobState(row["state"])

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
        with self._connect() as db:  # the freed pages go back to the file system
            db.executescript("PRAGMA incremental_vacuum;")  # run to the end (execute() frees one page)

    def recover_records(self, host: str) -> dict[str, JobState]:
        now = time.time()
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, worker, heartbeat FROM jobs WHERE state = ?", (JobState.RUNNING,)
            ).fetchall()
        states = {}
        for row in rows:
            if process_gone(row["worker"], host) or row["heartbeat"] < now - self.lease:
                with self._write() as db:  # unless its worker renewed the lease meanwhile
                    state = self._release(db, row["id"], row["worker"], LOST, heartbeat=row["heartbeat"])
                if state is not None:
                    states[row["id"]] = state
        return states

    def expire_records(self, older_than: float) -> list[str]:
        with self._write() as db:
            rows = db.execute(
                "UPDATE jobs SET state = ?, result = NULL "
                "WHERE state IN (?, ?, ?) AND finished_at < ? RETURNING id",
                (JobState.EXPIRED, *FINISHED, older_than),
            ).fetchall()
        return [row["id"] for row in rows]

    def ping(self, timeout: float) -> None:
        with self._connect(timeout) as db:
            db.execute("SELECT COUNT(*) FROM jobs WHERE 0").fetchone()

    def close(self) -> None:
        self._keeper.close()
