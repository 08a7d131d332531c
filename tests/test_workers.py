"""The worker pool against a real store (SQLite, then PostgreSQL): store errors, dead and stuck workers.

The jobs' work is a small function that writes a result file, so that these tests are about the
pool; the service tests run the real pipeline through it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from orchestrator.jobs.sqlite import SQLiteJobStore
from orchestrator.jobs.store import Job, JobState, JobStore
from orchestrator.jobs.workers import Beat, WorkerPool
from tests.helpers.stores import files, queue


def write_result(store: JobStore) -> Callable[[Job, Beat], tuple[str, dict]]:
    def run(job: Job, beat: Beat) -> tuple[str, dict]:
        (store.folder(job.id) / "result.jpg").write_bytes(b"swapped")
        beat(1, 1)
        return "result.jpg", {"faces": 1}

    return run


def wait_for(condition: Callable[[], object], timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.05)
    return value


@pytest.fixture
def pools():
    started: list[WorkerPool] = []

    def start(store: JobStore, run, workers: int = 1, **options) -> WorkerPool:
        pool = WorkerPool(store, run, workers, retention=3600, poll=0.05, **options)
        pool.start()
        started.append(pool)
        return pool

    yield start
    for pool in started:
        pool.shutdown(grace=1)


def test_workers_outlive_a_locked_database_and_the_pool_reports_it(pools, tmp_path):
    store = SQLiteJobStore(tmp_path, lease=1.5, timeout=0.2)
    release = threading.Event()
    plain = write_result(store)

    def run(job: Job, beat: Beat) -> tuple[str, dict]:
        if job.request["n"] == 0:
            release.wait(30)
        return plain(job, beat)

    pool = pools(store, run, workers=2)
    (held,) = queue(store)
    wait_for(lambda: store.get(held).state == JobState.RUNNING, 10, "running")
    with sqlite3.connect(tmp_path / "jobs.sqlite3", isolation_level=None) as holder:
        holder.execute("BEGIN IMMEDIATE")  # held for 3 s: far longer than the store's timeout
        release.set()  # the job ends while its end cannot be recorded
        problems = wait_for(pool.problems, 5, "reported")
        assert problems == ["job store unavailable: database is locked"]
        time.sleep(3)
        assert all(worker.thread.is_alive() for worker in pool.workers)
        holder.execute("ROLLBACK")
    wait_for(lambda: store.get(held).state == JobState.SUCCEEDED, 10, "recorded")
    assert files(store, held) == {"result.jpg"}
    later = queue(store, 3)
    for job_id in later:
        wait_for(lambda job_id=job_id: store.get(job_id).state == JobState.SUCCEEDED, 10, "done")
    assert pool.problems() == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death itself
def test_a_dead_worker_is_replaced_and_its_job_runs_again(pools, open_store):
    store = open_store(lease=1.0)
    plain = write_result(store)
    deaths = []

    def run(job: Job, beat: Beat) -> tuple[str, dict]:
        if not deaths:
            deaths.append(threading.current_thread().name)
            raise SystemExit  # ends the thread, past every `except Exception`
        return plain(job, beat)

    pool = pools(store, run)
    first = pool.workers[0].name
    (job_id,) = queue(store)
    job = wait_for(lambda: (j := store.get(job_id)).state == JobState.SUCCEEDED and j, 15, "done")
    assert deaths == [f"worker-{first}"]
    assert (
        job.attempts == 2 and job.worker != first and job.worker.rsplit(":", 1)[0] == first.rsplit(":", 1)[0]
    )
    assert [worker.name for worker in pool.workers] == [job.worker]
    assert pool.workers[0].thread.is_alive() and pool.problems() == []


def test_a_stuck_worker_is_replaced_and_its_job_released(pools, open_store):
    store = open_store(lease=1.5)
    plain = write_result(store)
    unstick, calls = threading.Event(), []

    def run(job: Job, beat: Beat) -> tuple[str, dict]:
        calls.append(threading.current_thread())
        if len(calls) == 1:
            unstick.wait(30)  # no progress at all: a hung call
            (store.folder(job.id) / "late.jpg").write_bytes(b"from the stuck run")
            return "late.jpg", {}
        return plain(job, beat)

    pool = pools(store, run, stuck_after=1.0)
    stuck = pool.workers[0].name
    (job_id,) = queue(store)
    job = wait_for(lambda: (j := store.get(job_id)).state == JobState.SUCCEEDED and j, 15, "done")
    assert job.attempts == 2 and job.worker != stuck and job.result == "result.jpg"
    assert files(store, job_id) == {"result.jpg"}
    unstick.set()  # the stuck run ends late: it no longer owns the job, and changes nothing
    calls[0].join(10)
    assert not calls[0].is_alive()
    assert store.get(job_id).result == "result.jpg" and store.get(job_id).state == JobState.SUCCEEDED
    assert [worker.name for worker in pool.workers] == [job.worker] and pool.problems() == []


def test_a_stuck_job_on_its_last_attempt_fails_with_the_reason(pools, open_store):
    store = open_store(lease=1.5)
    never = threading.Event()
    pool = pools(store, lambda job, beat: never.wait(30) and ("x", {}), stuck_after=0.5)
    (job_id,) = queue(store)
    job = wait_for(lambda: (j := store.get(job_id)).state == JobState.FAILED and j, 20, "failed")
    assert job.attempts == 2 and job.error == "its worker made no progress for 0.5 s, 2 times"
    assert files(store, job_id) == set()
    never.set()
    assert len(pool.workers) == 1 and pool.workers[0].thread.is_alive()
