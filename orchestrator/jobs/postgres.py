"""The shared job store: PostgreSQL (psycopg 3 with a connection pool), media on a shared volume.

Every replica connects to the same database and mounts the same media directory. Workers claim
with `SELECT … FOR UPDATE SKIP LOCKED`, so concurrent claims never wait on each other or take the
same job; leases are timed by the database's clock, so replicas' clocks need not agree. The schema
is created and migrated at start under an advisory lock, so replicas may start together. Broken
connections (a database restart) are replaced as they are next used.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from orchestrator.jobs.store import (
    FINISHED,
    LEASE,
    LOST,
    MAX_ATTEMPTS,
    Job,
    JobState,
    JobStore,
    StoreUnavailable,
)

_COLUMNS = ", ".join(field.name for field in dataclasses.fields(Job))
_STATUS = ", ".join(  # every column but the request, which statuses never show
    "'{}'::jsonb AS request" if field.name == "request" else field.name for field in dataclasses.fields(Job)
)
_NOW = "extract(epoch FROM clock_timestamp())::double precision"
_STATES = ", ".join(f"'{state}'" for state in JobState)
_MIGRATION_LOCK = 0x6661636573776170  # pg_advisory_xact_lock key ("faceswap")
# Each migration runs once, in order; the schema's version is how many have run.
MIGRATIONS = (
    f"""
    CREATE TABLE faceswap_jobs (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ({_STATES})),
        request JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        heartbeat DOUBLE PRECISION,
        worker TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        frames_done INTEGER NOT NULL DEFAULT 0,
        frames_total INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        report JSONB NOT NULL DEFAULT '{{}}'
    );
    CREATE INDEX faceswap_jobs_by_state ON faceswap_jobs (state, created_at, seq);
    """,
)
# Release a running job: cancelled if that was asked, else queued again, or failed after MAX_ATTEMPTS
# runs (parameters: reason, reason). Every SET expression sees the row as it was.
_AGAIN = f"NOT cancel_requested AND attempts < {MAX_ATTEMPTS}"
_RELEASE = f"""
UPDATE faceswap_jobs SET
    state = CASE WHEN cancel_requested THEN '{JobState.CANCELLED}'
        WHEN {_AGAIN} THEN '{JobState.QUEUED}' ELSE '{JobState.FAILED}' END,
    worker = CASE WHEN {_AGAIN} THEN NULL ELSE worker END,
    heartbeat = NULL,
    finished_at = CASE WHEN {_AGAIN} THEN NULL ELSE {_NOW} END,
    error = CASE WHEN cancel_requested THEN 'cancelled'
        WHEN {_AGAIN} THEN 'resumed: ' || %(reason)s::text
        ELSE %(reason)s::text || ', ' || attempts || ' times' END
"""


def _job(row: dict) -> Job:
    return Job(**row)


def _migrate(db: psycopg.Connection) -> int:
    """Bring the schema up to date, whoever else is doing it at the same time; its version."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS faceswap_schema (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM faceswap_schema").fetchone()
        version = 0 if row is None else row["version"]
        for migration in MIGRATIONS[version:]:
            db.execute(migration)
        if row is None:
            db.execute("INSERT INTO faceswap_schema (version) VALUES (%s)", (len(MIGRATIONS),))
        elif version < len(MIGRATIONS):
            db.execute("UPDATE faceswap_schema SET version = %s", (len(MIGRATIONS),))
    return len(MIGRATIONS)


class PostgresJobStore(JobStore):
    """Job records in the `faceswap_jobs` table of the database at `url`, media under `media`.

    `timeout` bounds the wait for a connection (and a connection attempt); `pool_size` is the most
    connections this process opens.
    """

    def __init__(
        self, url: str, media: Path, *, lease: float = LEASE, timeout: float = 30.0, pool_size: int = 10
    ):
        super().__init__(media, lease)
        connection = {"autocommit": True, "row_factory": dict_row, "connect_timeout": max(2, round(timeout))}
        try:  # the first connection tells why it fails, the pool's retries only that they do
            with psycopg.connect(url, **connection) as db:
                _migrate(db)
        except psycopg.Error as error:
            raise StoreUnavailable(error) from error
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            reconnect_timeout=max(timeout, 10.0),  # then new attempts start over from a short pause
            check=ConnectionPool.check_connection,
            kwargs=connection,
            open=True,  # connects in the background
            name="faceswap-jobs",
        )

    @contextlib.contextmanager
    def _connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        try:
            with self.pool.connection(timeout) as connection:
                yield connection
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:  # down, restarting, full
            raise StoreUnavailable(error) from error

    def migrate(self) -> int:
        """Bring the schema up to date (done at start); its version."""
        with self._connection() as db:
            return _migrate(db)

    def _one(self, query: str, parameters: dict | tuple = ()) -> dict | None:
        with self._connection() as db:
            return db.execute(query, parameters).fetchone()

    def insert(self, job_id: str, kind: str, request: dict) -> Job:
        row = self._one(
            f"INSERT INTO faceswap_jobs (id, kind, state, request, created_at) "
            f"VALUES (%s, %s, %s, %s, {_NOW}) RETURNING {_COLUMNS}",
            (job_id, kind, JobState.QUEUED, Jsonb(request)),
        )
        return _job(row)

    def get(self, job_id: str, request: bool = True) -> Job | None:
        row = self._one(
            f"SELECT {_COLUMNS if request else _STATUS} FROM faceswap_jobs WHERE id = %s", (job_id,)
        )
        return None if row is None else _job(row)

    def lookup(self, job_ids: Iterable[str]) -> dict[str, Job]:
        with self._connection() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM faceswap_jobs WHERE id = ANY(%s)", (list(job_ids),)
            ).fetchall()
        return {row["id"]: _job(row) for row in rows}

    def list(self, *, limit: int, offset: int, state: JobState | None = None) -> tuple[list[Job], int]:
        where, parameters = ("WHERE state = %s", (state,)) if state else ("", ())
        with self._connection() as db:
            total = db.execute(f"SELECT COUNT(*) AS n FROM faceswap_jobs {where}", parameters).fetchone()["n"]
            rows = db.execute(
                f"SELECT {_STATUS} FROM faceswap_jobs {where} "
                "ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
                (*parameters, limit, offset),
            ).fetchall()
        return [_job(row) for row in rows], total

    def counts(self) -> dict[JobState, int]:
        with self._connection() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM faceswap_jobs GROUP BY state").fetchall()
        return {state: 0 for state in JobState} | {JobState(row["state"]): row["n"] for row in rows}

    def claim(self, worker: str) -> Job | None:
        row = self._one(
            f"UPDATE faceswap_jobs SET state = %(running)s, worker = %(worker)s, started_at = {_NOW}, "
            f"heartbeat = {_NOW}, attempts = attempts + 1, frames_done = 0 "
            "WHERE id = (SELECT id FROM faceswap_jobs WHERE state = %(queued)s "
            "ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_COLUMNS}",
            {"running": JobState.RUNNING, "worker": worker, "queued": JobState.QUEUED},
        )
        return None if row is None else _job(row)

    def beat(
        self, job_id: str, worker: str, frames_done: int | None = None, frames_total: int | None = None
    ) -> bool:
        row = self._one(
            f"UPDATE faceswap_jobs SET heartbeat = {_NOW}, frames_done = COALESCE(%s, frames_done), "
            "frames_total = COALESCE(%s, frames_total) "
            "WHERE id = %s AND worker = %s AND state = %s RETURNING cancel_requested",
            (frames_done, frames_total, job_id, worker, JobState.RUNNING),
        )
        return row is None or row["cancel_requested"]

    def end(self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None) -> bool:
        row = self._one(
            f"UPDATE faceswap_jobs SET state = %s, finished_at = {_NOW}, result = %s, error = %s, "
            "report = %s WHERE id = %s AND worker = %s AND state = %s RETURNING id",
            (state, result, error, Jsonb(report or {}), job_id, worker, JobState.RUNNING),
        )
        return row is not None

    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        self._one(
            "UPDATE faceswap_jobs SET state = %s, worker = NULL, heartbeat = NULL, error = %s "
            "WHERE id = %s AND worker = %s AND state = %s RETURNING id",
            (JobState.QUEUED, reason, job_id, worker, JobState.RUNNING),
        )

    def release_records(self, job_id: str, worker: str, reason: str) -> JobState | None:
        row = self._one(
            _RELEASE + "WHERE id = %(id)s AND worker = %(worker)s AND state = %(running)s RETURNING state",
            {"reason": reason, "id": job_id, "worker": worker, "running": JobState.RUNNING},
        )
        return None if row is None else JobState(row["state"])

    def request_cancel(self, job_id: str) -> None:
        with self._connection() as db, db.transaction():
            db.execute(
                f"UPDATE faceswap_jobs SET state = %s, finished_at = {_NOW}, error = 'cancelled' "
                "WHERE id = %s AND state = %s",
                (JobState.CANCELLED, job_id, JobState.QUEUED),
            )
            db.execute(
                "UPDATE faceswap_jobs SET cancel_requested = TRUE WHERE id = %s AND state = %s",
                (job_id, JobState.RUNNING),
            )

    def remove(self, job_id: str) -> None:
        self._one(
            "DELETE FROM faceswap_jobs WHERE id = %s AND state NOT IN (%s, %s) RETURNING id",
            (job_id, JobState.QUEUED, JobState.RUNNING),
        )

    def recover_records(self, host: str) -> dict[str, JobState]:
        """Only the lease counts: another replica's processes cannot be seen from here."""
        with self._connection() as db:
            rows = db.execute(
                _RELEASE
                + f"WHERE state = %(running)s AND heartbeat < {_NOW} - %(lease)s RETURNING id, state",
                {"reason": LOST, "running": JobState.RUNNING, "lease": self.lease},
            ).fetchall()
        return {row["id"]: JobState(row["state"]) for row in rows}

    def expire_records(self, older_than: float) -> list[str]:
        with self._connection() as db:
            rows = db.execute(
                "UPDATE faceswap_jobs SET state = %s, result = NULL "
                "WHERE state IN (%s, %s, %s) AND finished_at < %s RETURNING id",
                (JobState.EXPIRED, *FINISHED, older_than),
            ).fetchall()
        return [row["id"] for row in rows]

    def ping(self, timeout: float) -> None:
        with self._connection(timeout) as db:
            db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self.pool.close()
