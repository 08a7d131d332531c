"""The worker pool: threads that claim and run jobs from a store, plus upkeep.

Upkeep, every few seconds: heartbeats of the running jobs, recovery of jobs orphaned by a dead
process, and deletion of finished jobs' media after the retention period.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from orchestrator.errors import Cancelled, FaceSwapError
from orchestrator.jobs.store import Job, JobState, JobStore

log = logging.getLogger(__name__)
HEARTBEAT = 5.0

# run(job, beat) -> (result file name, report); beat(done, total) -> whether a cancel was requested.
Beat = Callable[[int, int], bool]
Run = Callable[[Job, Beat], tuple[str, dict]]


class Stop(Exception):
    """Raised inside a job when the service shuts down: the job is queued again."""


class WorkerPool:
    """Threads that claim and run jobs, plus upkeep: heartbeats, orphan recovery, retention.

    `run(job, beat)` does a job's work and returns (result file name, report); it calls
    `beat(done, total)`, which returns True once the job's cancellation was requested and raises
    `Stop` when the service shuts down past its grace period.
    """

    def __init__(self, store: JobStore, run: Run, workers: int, retention: float, poll: float = 0.5):
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
            self.store.finish(job.id, worker, JobState.CANCELLED, error="cancelled")
        except Exception as error:  # every failure ends the job with its reason; the service goes on
            if not isinstance(error, FaceSwapError):
                log.exception("job %s failed", job.id)
            message = " ".join(str(error).split()) or type(error).__name__
            self.store.finish(job.id, worker, JobState.FAILED, error=message)
        else:
            self.store.finish(job.id, worker, JobState.SUCCEEDED, result=result, report=report)

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
            except Exception:  # the store is unavailable for now: upkeep tries again at the next beat
                log.exception("job upkeep failed; retrying")
