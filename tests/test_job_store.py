"""The job store's contract, run against both implementations: SQLite and a real PostgreSQL server
(the `open_store` fixture is parametrized over both).

Several store objects opened on one database stand for several replicas (each PostgreSQL store has
its own connection pool); worker names of a host that is not this one keep SQLite's same-host
process check out of the way, so only leases decide, as across hosts.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from modelplane.local_server import free_port
from orchestrator.jobs.postgres import MIGRATIONS, PostgresJobStore
from orchestrator.jobs.sqlite import SCHEMA_VERSION, SQLiteJobStore
from orchestrator.jobs.store import (
    ABANDONED_AFTER,
    LOST,
    MAX_ATTEMPTS,
    OWNER,
    JobState,
    JobStore,
    StoreUnavailable,
    process_name,
)
from tests.helpers.stores import ELSEWHERE, HOST, dead_pid, files, queue


@pytest.fixture
def store(open_store) -> JobStore:
    return open_store()


# --- records


def test_a_created_job_is_queued_with_its_request_and_uploads(store):
    (job_id,) = queue(store)
    job = store.get(job_id)
    assert job.state == JobState.QUEUED and job.kind == "image" and job.attempts == 0
    assert job.request == {"target": "target.jpg", "n": 0, "options": {"selector": "many"}}
    assert job.worker is None and job.heartbeat is None and job.report == {} and job.progress == 0
    assert abs(job.created_at - time.time()) < 5
    assert files(store, job_id) == {"target.jpg"}  # the upload folder's owner mark is gone
    assert store.get("0" * 32) is None
    assert set(store.lookup([job_id, "0" * 32])) == {job_id}


def test_claims_take_the_oldest_job_once(store):
    ids = queue(store, 3)
    claimed = [store.claim(f"{ELSEWHERE}:{n}") for n in range(4)]
    assert [job.id for job in claimed[:3]] == ids and claimed[3] is None
    for n, job in enumerate(claimed[:3]):
        assert job.state == JobState.RUNNING and job.attempts == 1 and job.worker == f"{ELSEWHERE}:{n}"
        assert job.started_at is not None and job.heartbeat is not None
        assert store.get(job.id).worker == job.worker


def test_concurrent_claims_from_several_replicas_never_share_a_job(open_store):
    """Three stores (replicas), four threads each, claiming 60 jobs as fast as they can."""
    replicas = [open_store() for _ in range(3)]
    ids = queue(replicas[0], 60)
    start = threading.Barrier(12)

    def drain(replica: JobStore, worker: str) -> list[str]:
        start.wait()
        taken = []
        while (job := replica.claim(worker)) is not None:
            taken.append(job.id)
        return taken

    with ThreadPoolExecutor(12) as pool:
        workers = {f"{ELSEWHERE}:{r}{t}": replicas[r] for r in range(3) for t in range(4)}
        results = dict(zip(workers, pool.map(drain, workers.values(), workers.keys()), strict=True))
    claimed = [job_id for taken in results.values() for job_id in taken]
    assert sorted(claimed) == sorted(ids)  # every job, none twice
    for worker, taken in results.items():
        assert all(replicas[0].get(job_id).worker == worker for job_id in taken)
    assert sum(1 for taken in results.values() if taken) > 1  # the work really was shared


def test_a_heartbeat_records_progress_and_renews_the_lease(store):
    queue(store)
    job = store.claim(f"{ELSEWHERE}:0")
    time.sleep(0.05)
    assert store.beat(job.id, job.worker, 3, 10) is False
    renewed = store.get(job.id)
    assert (renewed.frames_done, renewed.frames_total) == (3, 10) and renewed.progress == 0.3
    assert renewed.heartbeat > job.heartbeat
    time.sleep(0.05)
    assert store.beat(job.id, job.worker) is False  # a renewal alone keeps the progress
    again = store.get(job.id)
    assert (again.frames_done, again.frames_total) == (3, 10) and again.heartbeat > renewed.heartbeat
    assert store.beat(job.id, "someone-else:9:0", 4, 10) is True  # not its job: stop
    assert store.get(job.id).frames_done == 3


def test_a_finished_job_keeps_its_result_only(store):
    (job_id,) = queue(store)
    job = store.claim(f"{ELSEWHERE}:0")
    (store.folder(job_id) / "result.jpg").write_bytes(b"result")
    (store.folder(job_id) / ".result.jpg.1234.part.jpg").write_bytes(b"partial")
    report = {"faces": 2, "seconds": {"swap": 0.5}}
    assert store.finish(job_id, job.worker, JobState.SUCCEEDED, result="result.jpg", report=report)
    done = store.get(job_id)
    assert done.state == JobState.SUCCEEDED and done.result == "result.jpg" and done.report == report
    assert done.finished_at >= done.started_at and done.progress == 1.0
    assert files(store, job_id) == {"result.jpg"}
    assert not store.finish(job_id, job.worker, JobState.FAILED, error="late")  # ended: no second end
    assert store.get(job_id).state == JobState.SUCCEEDED


# --- leases and recovery

LEASE = 1.5  # long enough that a loaded machine reaches the next check before it lapses


def recovered(store: JobStore, timeout: float = 30) -> list[str]:
    """What `store.recover` gives back once a lease has lapsed, polled for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := store.recover(HOST)):
        assert time.monotonic() < deadline, "no lease lapsed"
        time.sleep(0.1)
    return found


def test_a_lapsed_lease_is_recovered_by_any_replica_then_failed_after_max_attempts(open_store):
    first, other = open_store(lease=LEASE), open_store(lease=LEASE)
    (job_id,) = queue(first)
    job = first.claim(f"{ELSEWHERE}:0")
    (first.folder(job_id) / ".result.mp4.abcd.part.mp4").write_bytes(b"cut short")
    assert other.recover(HOST) == []  # the lease holds
    assert recovered(other) == [job_id]
    queued = other.get(job_id)
    assert queued.state == JobState.QUEUED and queued.worker is None and queued.attempts == 1
    assert queued.error == f"resumed: {LOST}"
    # The worker that lost it can neither renew nor end it, nor delete its files.
    assert first.beat(job_id, job.worker, 5, 10) is True
    assert not first.finish(job_id, job.worker, JobState.FAILED, error="lost")
    assert "target.jpg" in files(first, job_id)

    second = other.claim(f"{ELSEWHERE}:1")
    assert second.id == job_id and second.attempts == 2 == MAX_ATTEMPTS and second.frames_done == 0
    assert recovered(first) == [job_id]
    failed = first.get(job_id)
    assert failed.state == JobState.FAILED and failed.error == f"{LOST}, 2 times"
    assert failed.finished_at is not None and failed.result is None
    assert files(first, job_id) == set()  # its inputs and the partial file are gone
    assert first.claim(f"{ELSEWHERE}:2") is None


def test_a_renewed_lease_is_never_recovered(open_store):
    store, other = open_store(lease=3 * LEASE), open_store(lease=3 * LEASE)  # renewed every 0.2 s
    queue(store)
    job = store.claim(f"{ELSEWHERE}:0")
    for _ in range(8):
        time.sleep(0.2)
        assert store.beat(job.id, job.worker) is False
        assert other.recover(HOST) == []
    assert other.get(job.id).state == JobState.RUNNING


def test_a_job_whose_cancel_was_asked_is_cancelled_when_its_lease_lapses(open_store):
    store = open_store(lease=0.3)
    (job_id,) = queue(store)
    store.claim(f"{ELSEWHERE}:0")
    store.request_cancel(job_id)
    assert recovered(store) == [job_id]
    job = store.get(job_id)
    assert job.state == JobState.CANCELLED and job.error == "cancelled" and files(store, job_id) == set()


def test_a_dead_process_on_this_host_is_recovered_at_once_by_sqlite(tmp_path):
    """SQLite holds one host's jobs: a worker whose process is gone needs no lease to lapse."""
    store = SQLiteJobStore(tmp_path)
    alive, dead = queue(store, 2)
    store.claim(process_name() + ":0")
    store.claim(f"{HOST}:{dead_pid()}:0")
    assert store.recover(HOST) == [dead]
    assert store.get(alive).state == JobState.RUNNING and store.get(dead).state == JobState.QUEUED


def test_release_queues_again_then_fails_with_the_reason(store):
    (job_id,) = queue(store)
    reason = "its worker made no progress for 600 s"
    assert store.release(job_id, f"{ELSEWHERE}:0", reason) is None  # not running
    store.claim(f"{ELSEWHERE}:0")
    assert store.release(job_id, f"{ELSEWHERE}:9", reason) is None  # not its worker
    assert store.release(job_id, f"{ELSEWHERE}:0", reason) == JobState.QUEUED
    assert store.get(job_id).error == f"resumed: {reason}"
    store.claim(f"{ELSEWHERE}:1")
    assert store.release(job_id, f"{ELSEWHERE}:1", reason) == JobState.FAILED
    job = store.get(job_id)
    assert (
        job.state == JobState.FAILED and job.error == f"{reason}, 2 times" and files(store, job_id) == set()
    )


def test_a_job_requeued_at_shutdown_runs_again(store):
    (job_id,) = queue(store)
    job = store.claim(f"{ELSEWHERE}:0")
    store.requeue(job_id, job.worker, "resumed: the service shut down while it ran")
    queued = store.get(job_id)
    assert queued.state == JobState.QUEUED and queued.error == "resumed: the service shut down while it ran"
    assert store.claim(f"{ELSEWHERE}:1").attempts == 2


# --- cancel, expire, remove


def test_cancel_ends_a_queued_job_now_and_asks_a_running_one_to_stop(open_store):
    store, other = open_store(), open_store()
    queued, running = queue(store, 2)
    job = store.claim(f"{ELSEWHERE}:0")
    assert job.id == queued
    store.requeue(queued, job.worker, "back")  # so that `running` is the one claimed next
    job = store.claim(f"{ELSEWHERE}:0")
    assert job.id == queued
    assert store.beat(queued, job.worker) is False
    assert other.cancel(queued).cancel_requested is True  # asked on another replica
    assert store.beat(queued, job.worker) is True  # ...its worker is told at its next heartbeat
    assert store.finish(queued, job.worker, JobState.CANCELLED, error="cancelled")
    cancelled = other.cancel(running)
    assert cancelled.state == JobState.CANCELLED and cancelled.error == "cancelled"
    assert files(store, running) == set() and files(store, queued) == set()
    assert store.get(queued).state == JobState.CANCELLED
    assert other.cancel("0" * 32) is None


def test_finished_jobs_expire_with_their_media(store):
    old, recent, waiting = queue(store, 3)
    for job_id in (old, recent):
        job = store.claim(f"{ELSEWHERE}:0")
        assert job.id == job_id
        (store.folder(job.id) / "result.jpg").write_bytes(b"result")
        store.finish(job.id, job.worker, JobState.SUCCEEDED, result="result.jpg")
        time.sleep(0.05)
    cutoff = (store.get(old).finished_at + store.get(recent).finished_at) / 2
    assert store.expire(cutoff) == 1
    expired = store.get(old)
    assert expired.state == JobState.EXPIRED and expired.result is None
    assert not store.folder(old).exists() and files(store, recent) == {"result.jpg"}
    assert store.expire(time.time() + 60) == 1  # `recent`; never a queued or running job
    assert store.get(waiting).state == JobState.QUEUED and store.expire(time.time() + 60) == 0


def test_only_finished_jobs_are_removed(store):
    queued, running, done = queue(store, 3)
    store.claim(f"{ELSEWHERE}:0")  # queued is now running; claim the next as well
    job = store.claim(f"{ELSEWHERE}:1")
    store.finish(job.id, job.worker, JobState.FAILED, error="bad input")
    job = store.claim(f"{ELSEWHERE}:2")
    assert job.id == done
    for job_id in (queued, done, running):
        store.delete(job_id)
    assert store.get(queued).state == JobState.RUNNING and store.get(done).state == JobState.RUNNING
    assert store.get(running) is None and not store.folder(running).exists()


# --- paging and counts


def test_pages_are_newest_first_with_totals_and_counts_cover_every_state(store):
    ids = queue(store, 7)
    newest_first = ids[::-1]
    job = store.claim(f"{ELSEWHERE}:0")  # the oldest
    store.finish(job.id, job.worker, JobState.FAILED, error="no")
    store.claim(f"{ELSEWHERE}:1")
    page, total = store.list(limit=3, offset=0)
    assert [j.id for j in page] == newest_first[:3] and total == 7
    page, total = store.list(limit=3, offset=5)
    assert [j.id for j in page] == newest_first[5:] and total == 7
    assert store.list(limit=3, offset=7) == ([], 7)
    page, total = store.list(limit=10, offset=0, state=JobState.QUEUED)
    assert [j.id for j in page] == newest_first[:5] and total == 5
    assert [j.id for j in store.list(limit=10, offset=0, state=JobState.FAILED)[0]] == [ids[0]]
    assert store.list(limit=10, offset=0, state=JobState.EXPIRED) == ([], 0)
    counts = store.counts()
    assert counts == {
        JobState.QUEUED: 5,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 1,
        JobState.CANCELLED: 0,
        JobState.EXPIRED: 0,
    }


# --- schema


def test_stores_opened_at_once_migrate_once_and_keep_the_data(open_store, tmp_path):
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: open_store(), range(6)))  # six replicas starting together
    ids = queue(stores[0], 2)
    reopened = open_store()
    assert [job.id for job in reopened.list(limit=10, offset=0)[0]] == ids[::-1]
    if isinstance(reopened, PostgresJobStore):
        assert reopened.migrate() == len(MIGRATIONS)
        with reopened.pool.connection() as db:
            assert db.execute("SELECT version FROM faceswap_schema").fetchall() == [
                {"version": len(MIGRATIONS)}
            ]
    else:
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_database_of_the_previous_version_is_migrated_in_place(tmp_path):
    """SQLite databases written before schema versions: the table is there, user_version is 0."""
    store = SQLiteJobStore(tmp_path)
    (job_id,) = queue(store)
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        db.execute("PRAGMA user_version = 0")
    reopened = SQLiteJobStore(tmp_path)
    assert reopened.get(job_id).state == JobState.QUEUED
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# --- folders nobody needs


def test_the_sweep_removes_abandoned_upload_folders_and_finished_jobs_leftovers(store):
    def folder_of(owner: str | None, age: float = 0.0) -> Path:
        _, folder = store.new_folder()
        (folder / "source-1.jpg").write_bytes(b"half an upload")
        if owner is None:
            (folder / OWNER).unlink()
        else:
            (folder / OWNER).write_text(owner)
        for path in (*folder.iterdir(), folder):
            os.utime(path, (time.time() - age, time.time() - age))
        return folder

    ours = folder_of(process_name())  # an upload in progress in this process
    dead = folder_of(f"{HOST}:{dead_pid()}")  # killed during its upload
    remote = folder_of("another-host:7")  # another host's upload: still fresh
    stale = folder_of("another-host:7", age=ABANDONED_AFTER + 60)  # another host's, long untouched
    unmarked = folder_of(None, age=ABANDONED_AFTER + 60)
    failed, succeeded, queued = queue(store, 3)
    for job_id, state, result in ((failed, JobState.FAILED, None), (succeeded, JobState.SUCCEEDED, "r.jpg")):
        job = store.claim(f"{ELSEWHERE}:0")
        assert job.id == job_id
        store.end(job_id, job.worker, state, result=result)  # as if the process died before cleaning up
        (store.folder(job_id) / ".r.jpg.99.part.jpg").write_bytes(b"partial")
    (store.folder(succeeded) / "r.jpg").write_bytes(b"result")

    assert store.sweep(HOST) == 5
    assert ours.is_dir() and remote.is_dir()
    assert not dead.exists() and not stale.exists() and not unmarked.exists()
    assert files(store, failed) == set() and files(store, succeeded) == {"r.jpg"}
    assert files(store, queued) == {"target.jpg"}
    assert store.sweep(HOST) == 0


# --- errors


def test_a_locked_sqlite_database_is_a_store_error_and_reads_still_work(tmp_path):
    store = SQLiteJobStore(tmp_path, timeout=0.3)
    (job_id,) = queue(store)
    with sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None) as holder:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="job store unavailable: database is locked"):
            store.claim(f"{ELSEWHERE}:0")
        with pytest.raises(StoreUnavailable, match="database is locked"):
            queue(store)
        assert store.get(job_id).state == JobState.QUEUED  # WAL: readers never wait for the writer
        store.ping(timeout=0.3)
        reopened = SQLiteJobStore(tmp_path, timeout=0.3)  # a current database opens under the lock
        holder.execute("ROLLBACK")
    assert reopened.claim(f"{ELSEWHERE}:0").id == job_id


@pytest.mark.postgres
def test_an_unreachable_postgres_is_a_store_error(tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"job store unavailable: connection failed: .* refused"):
        PostgresJobStore(url, tmp_path, timeout=2)
    assert time.monotonic() - started < 10


@pytest.mark.postgres
def test_a_postgres_restart_is_a_store_error_until_the_store_reconnects(postgres, tmp_path):
    """Stops the session's server for a moment: tests after this one find it running again."""
    store = PostgresJobStore(postgres.new_database(), tmp_path, timeout=2)
    (job_id,) = queue(store)
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable):
            store.get(job_id)
        with pytest.raises(StoreUnavailable):
            store.ping(timeout=1)
    finally:
        postgres.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert store.get(job_id).state == JobState.QUEUED
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not reconnect"
            time.sleep(0.2)
    assert store.claim(f"{ELSEWHERE}:0").id == job_id
    with psycopg.connect(postgres.url(), autocommit=True) as db:  # the server really restarted
        assert db.execute("SELECT pg_postmaster_start_time() > now() - interval '1 minute'").fetchone()[0]
    store.close()
