"""The worker pool: threads that claim and run jobs from a store, and their supervisor.

The supervisor (the upkeep thread), several times per lease: renews the leases of the running
jobs, replaces a worker thread that died or made no progress for too long (its job is released:
queued again or failed with the reason), queues again jobs whose lease lapsed anywhere, deletes
finished jobs' media after the retention period, and now and then sweeps folders no job needs.
A store error never ends a thread: the operation is retried with a growing pause, and the pool
reports the error (`problems`) until the store answers again.

With a `gate` (orchestrator.triton_health), workers claim no job while the model plane cannot take
work, and a job that failed because it went away waits for it, up to `gate_wait` seconds, then
runs again from the start; only past that wait does it fail, with the reason.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.errors import Cancelled, FaceSwapError, TritonError
from orchestrator.jobs.store import Job, JobState, JobStore, StoreUnavailable, process_name
from orchestrator.triton_health import TritonHealth

log = logging.getLogger(__name__)
HEARTBEAT = 5.0  # the longest pause between upkeep rounds
SWEEP_EVERY = 600.0
MAX_PAUSE = 5.0  # the longest pause between retries of a failed store operation

# run(job, beat) -> (result file name, report); beat(done, total) -> whether the job should stop.
Beat = Callable[[int, int], bool]
Run = Callable[[Job, Beat], tuple[str, dict]]


class Stop(Exception):
    """Raised inside a job when the service shuts down: the job is queued again."""


@dataclass
class _Worker:
    """One worker thread: its name in the store, its job, and when it last showed progress."""

    name: str
    thread: threading.Thread | None = None
    job_id: str | None = None
    active_at: float = field(default_factory=time.monotonic)
    retired: bool = False  # replaced after it got stuck: it ends as soon as it returns


class WorkerPool:
    """Threads that claim and run jobs, and the upkeep that keeps them (and the store) going.

    `run(job, beat)` does a job's work and returns (result file name, report); it calls
    `beat(done, total)`, which returns True once the job should stop (cancelled, or lost to
    another worker) and raises `Stop` when the service shuts down past its grace period. A worker
    whose job shows no progress for `stuck_after` seconds is replaced.
    """

    def __init__(
        self,
        store: JobStore,
        run: Run,
        workers: int,
        retention: float,
        poll: float = 0.5,
        stuck_after: float = 600.0,
        gate: TritonHealth | None = None,
        gate_wait: float = 300.0,
    ):
        self.store = store
        self.run = run
        self.retention = retention
        self.poll = poll
        self.stuck_after = stuck_after
        self.gate = gate
        self.gate_wait = gate_wait
        self._gate_problem: str | None = None
        self.upkeep_every = min(HEARTBEAT, store.lease / 3)
        self.host = process_name().split(":")[0]
        self._numbers = itertools.count()
        self.workers = [_Worker(f"{process_name()}:{next(self._numbers)}") for _ in range(workers)]
        self._wake = threading.Event()
        self._stopping = threading.Event()  # claim no more jobs
        self._abandon = threading.Event()  # grace is over: give running jobs back to the queue
        self._upkeep: threading.Thread | None = None
        self._store_error: str | None = None

    @property
    def running(self) -> dict[str, str]:
        """job id -> worker name, of the jobs this process runs."""
        return {w.job_id: w.name for w in list(self.workers) if w.job_id and not w.retired}

    def start(self) -> None:
        for worker in self.workers:
            self._spawn(worker)
        self._upkeep = threading.Thread(target=self._maintain, name="job-upkeep", daemon=True)
        self._upkeep.start()

    def _spawn(self, worker: _Worker) -> None:
        worker.thread = threading.Thread(
            target=self._loop, args=(worker,), name=f"worker-{worker.name}", daemon=True
        )
        worker.thread.start()

    def wake(self) -> None:
        """A job was queued: claim it now rather than at the next poll."""
        self._wake.set()

    def shutdown(self, grace: float) -> None:
        """Stop claiming; let running jobs finish for `grace` seconds, then queue them again."""
        self._stopping.set()
        self._wake.set()
        threads = [w.thread for w in list(self.workers) if w.thread is not None]
        deadline = time.monotonic() + grace
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        for thread in threads:
            thread.join(timeout=30)

    # --- health

    @property
    def upkeep_alive(self) -> bool:
        """False once the thread that replaces failed workers has ended (before shutdown: a bug)."""
        return self._upkeep is None or self._upkeep.is_alive() or self._stopping.is_set()

    def problems(self) -> list[str]:
        """Why the pool cannot work right now (empty when it can)."""
        found = []
        if self._store_error is not None:
            found.append(self._store_error)
        if not self.upkeep_alive:
            found.append("the job upkeep stopped")
        alive = sum(1 for w in list(self.workers) if w.thread is not None and w.thread.is_alive())
        if self._upkeep is not None and alive < len(self.workers):
            found.append(f"{len(self.workers) - alive} of {len(self.workers)} job workers are not running")
        return found

    def _store_failed(self, error: StoreUnavailable, doing: str) -> None:
        message = str(error)
        if self._store_error != message:
            log.warning("%s failed: %s; retrying", doing, message)
        self._store_error = message

    def _store_ok(self) -> None:
        if self._store_error is not None:
            log.info("the job store answers again")
        self._store_error = None

    def _retry(self, action: Callable[[], object], doing: str, worker: _Worker) -> bool:
        """Run a store operation until it succeeds (True), or the service gives up on its jobs.

        A worker waiting here for the store is not stuck.
        """
        pause = 0.25
        while True:
            worker.active_at = time.monotonic()
            try:
                action()
            except StoreUnavailable as error:
                self._store_failed(error, doing)
            else:
                self._store_ok()
                return True
            if self._abandon.wait(pause):
                return False
            pause = min(pause * 2, MAX_PAUSE)

    # --- workers

    def _closed(self) -> bool:
        """Whether the model plane cannot take work (logged when that changes)."""
        problem = self.gate.problem() if self.gate is not None else None
        if problem != self._gate_problem:
            if problem is not None:
                log.warning("jobs wait in the queue: %s", problem)
            else:
                log.info("Triton takes work again: workers claim jobs")
            self._gate_problem = problem
        return problem is not None

    def _loop(self, worker: _Worker) -> None:
        pause = self.poll
        while not self._stopping.is_set() and not worker.retired:
            worker.active_at = time.monotonic()
            if self._closed():
                self._stopping.wait(self.poll)
                continue
            try:
                job = self.store.claim(worker.name)
            except StoreUnavailable as error:
                self._store_failed(error, f"{worker.name}: claiming a job")
                self._stopping.wait(pause)
                pause = min(pause * 2, MAX_PAUSE)
                continue
            self._store_ok()
            pause = self.poll
            if job is None:
                self._wake.wait(self.poll)
                self._wake.clear()
                continue
            worker.job_id = job.id
            try:
                self._run(job, worker)
            except Exception:  # a bug outside the job's own code: the lease lapses, the job runs again
                log.exception("worker %s failed on job %s", worker.name, job.id)
            finally:
                worker.job_id = None

    def _run(self, job: Job, worker: _Worker) -> None:
        last = [0.0]

        def beat(done: int, total: int) -> bool:
            if self._abandon.is_set():
                raise Stop()
            worker.active_at = time.monotonic()
            if worker.retired:
                return True
            if time.monotonic() - last[0] < 1.0 and done < total:
                return False
            last[0] = time.monotonic()
            try:
                stop = self.store.beat(job.id, worker.name, done, total)
            except StoreUnavailable as error:  # keep working; the lease is renewed once it answers
                self._store_failed(error, f"job {job.id}: heartbeat")
                return False
            self._store_ok()
            return stop

        name, store = worker.name, self.store
        try:
            result, report = self._attempts(job, worker, beat)
        except Stop:
            self._retry(
                lambda: store.requeue(job.id, name, "resumed: the service shut down while it ran"),
                f"job {job.id}: queueing it again",
                worker,
            )
        except Cancelled:
            self._retry(
                lambda: store.finish(job.id, name, JobState.CANCELLED, error="cancelled"),
                f"job {job.id}: recording its cancellation",
                worker,
            )
        except Exception as error:  # every failure ends the job with its reason; the service goes on
            message = " ".join(str(error).split()) or type(error).__name__
            if not isinstance(error, FaceSwapError):
                log.exception("job %s failed", job.id)
            else:
                log.warning("job %s failed: %s", job.id, message)
            self._retry(
                lambda: store.finish(job.id, name, JobState.FAILED, error=message),
                f"job {job.id}: recording its failure",
                worker,
            )
        else:
            self._retry(
                lambda: store.finish(job.id, name, JobState.SUCCEEDED, result=result, report=report),
                f"job {job.id}: recording its result",
                worker,
            )

    def _attempts(self, job: Job, worker: _Worker, beat: Beat) -> tuple[str, dict]:
        """Run the job; when it failed because the model plane went away, wait for it and run again."""
        while True:
            try:
                return self.run(job, beat)
            except TritonError:
                if self.gate is None or self.gate.problem() is None:
                    raise
                self._closed()
                log.warning("job %s paused: waiting up to %g s for Triton", job.id, self.gate_wait)

                def pause(seconds: float) -> bool:
                    worker.active_at = time.monotonic()  # waiting is not being stuck
                    if self._abandon.wait(seconds):
                        raise Stop() from None
                    try:
                        if self.store.beat(job.id, worker.name):
                            raise Cancelled() from None
                    except StoreUnavailable as error:
                        self._store_failed(error, f"job {job.id}: heartbeat")
                    return False

                problem = self.gate.wait(self.gate_wait, pause)
                if problem is not None:
                    raise TritonError(f"{problem} (the job waited {self.gate_wait:g} s for it)") from None
                log.info("job %s resumed: Triton takes work again; it runs again from the start", job.id)

    # --- upkeep

    def _supervise(self) -> None:
        """Replace workers that died or got stuck; a stuck worker's job is released."""
        for index, worker in enumerate(list(self.workers)):
            if self._stopping.is_set():
                return
            died = worker.thread is not None and not worker.thread.is_alive()
            stuck = worker.job_id is not None and time.monotonic() - worker.active_at > self.stuck_after
            if not (died or stuck):
                continue
            job_id = worker.job_id
            worker.retired = True
            if stuck:
                reason = f"its worker made no progress for {self.stuck_after:g} s"
                log.error(
                    "worker %s: no progress on job %s for %g s; replaced",
                    worker.name,
                    job_id,
                    self.stuck_after,
                )
                try:
                    self.store.release(job_id, worker.name, reason)
                except StoreUnavailable as error:  # its lease is no longer renewed: it lapses
                    self._store_failed(error, f"job {job_id}: releasing it")
            else:
                log.error("worker %s stopped unexpectedly; replaced", worker.name)
            replacement = _Worker(f"{process_name()}:{next(self._numbers)}")
            self.workers[index] = replacement
            self._spawn(replacement)

    def _maintain(self) -> None:
        """At start and every few seconds: workers, leases, recovery, retention; the sweep now and then."""
        next_sweep = time.monotonic()
        while True:
            self._supervise()
            try:
                for job_id, name in self.running.items():
                    self.store.beat(job_id, name)
                if self.store.recover(self.host):
                    self._wake.set()
                self.store.expire(time.time() - self.retention)
                if time.monotonic() >= next_sweep:
                    self.store.sweep(self.host)
                    next_sweep = time.monotonic() + SWEEP_EVERY
            except StoreUnavailable as error:
                self._store_failed(error, "job upkeep")
            except Exception:  # anything else is a bug: logged, and upkeep goes on
                log.exception("job upkeep failed; retrying")
            else:
                self._store_ok()
            if self._stopping.wait(self.upkeep_every):
                return
