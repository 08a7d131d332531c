"""The job store's interface: job records, their states, and the media folder of each job.

A job is a record in a database and a folder `<media>/<id>/` holding its uploads (server-chosen
names) and, once done, its result. Workers claim queued jobs atomically, so any number of worker
threads, processes and replicas can share one store. A running job holds a lease that its worker
renews (the heartbeat); a job whose lease lapsed (its process killed, its host gone) is queued again
by any replica, up to `MAX_ATTEMPTS` runs, then failed with the reason. Every write a worker makes
to its job names the worker, so a worker that lost its job can no longer touch it. Finished jobs'
media are deleted after the retention period; the record stays, in state `expired`.
Implementations keep the records; the media folders are handled here.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from orchestrator.errors import FaceSwapError, StorageFull

MAX_ATTEMPTS = 2
LEASE = 60.0  # seconds a running job's lease lasts without a heartbeat
ABANDONED_AFTER = 3600.0  # seconds untouched before another host's record-less folder is abandoned
OWNER = ".owner"  # in a folder whose uploads are still arriving: the process writing them
LOST = "the service stopped while it ran"  # why a job whose lease lapsed ran again, or failed


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # finished, and its media deleted after the retention period


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class StoreUnavailable(FaceSwapError):
    """The job database cannot be used right now (unreachable, locked, out of space)."""

    status = 503

    def __init__(self, error: BaseException):
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        super().__init__(f"job store unavailable: {reason}")


@dataclass
class Job:
    id: str
    kind: str  # image | video
    state: JobState
    request: dict  # stored inputs and options
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat: float | None = None  # the lease's last renewal
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    frames_done: int = 0
    frames_total: int = 0
    result: str | None = None  # file name in the job's folder
    error: str | None = None
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = JobState(self.state)

    @property
    def progress(self) -> float:
        if self.state == JobState.SUCCEEDED:
            return 1.0
        return self.frames_done / self.frames_total if self.frames_total else 0.0


def process_name() -> str:
    """`host:pid` of this process: workers are named `host:pid:n`, upload folders carry it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(owner: str, host: str) -> bool:
    """Whether `owner` (`host:pid[:...]`) is a process of this host that no longer runs.

    Another host's processes cannot be seen: False for them.
    """
    owner_host, _, rest = owner.partition(":")
    if owner_host != host:
        return False
    try:
        os.kill(int(rest.split(":")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, OSError):  # not a pid, or a live process of another user
        return False
    return False


def untouched_for(folder: Path) -> float:
    """Seconds since anything in `folder` (or the folder itself) last changed."""
    try:
        times = [folder.stat().st_mtime, *(path.stat().st_mtime for path in folder.iterdir())]
    except FileNotFoundError:
        return 0.0
    return time.time() - max(times)


def abandoned(folder: Path, host: str) -> bool:
    """A folder with no job record: its uploads were cut short (the process died), or so long ago."""
    with contextlib.suppress(OSError):
        if process_gone((folder / OWNER).read_text(), host):
            return True
    return untouched_for(folder) > ABANDONED_AFTER


class JobStore(abc.ABC):
    """Job records (in the implementation's database) and one media folder per job under `media`.

    `lease` is how long a running job stays its worker's without a heartbeat. Database errors
    surface as `StoreUnavailable`.
    """

    def __init__(self, media: Path, lease: float = LEASE):
        self.media = Path(media)
        self.media.mkdir(parents=True, exist_ok=True)
        self.lease = lease

    # --- media folders

    def folder(self, job_id: str) -> Path:
        return self.media / job_id

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its media folder, for the uploads before the job is queued.

        The folder names this process until `create` records the job, so that a folder left by a
        process killed during an upload can be told from one still being filled.
        """
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        folder.mkdir()
        try:
            (folder / OWNER).write_text(process_name())
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            if error.errno in StorageFull.ERRNOS:
                raise StorageFull() from error
            raise
        return job_id, folder

    def delete_uploads(self, job_id: str, keep: str | None) -> None:
        """Remove a job's files (uploads, temporary files) but `keep` (its result)."""
        folder = self.folder(job_id)
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name != keep:
                    path.unlink(missing_ok=True)

    def delete_media(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def sweep(self, host: str) -> int:
        """Remove what no job needs; how many folders were cleaned.

        Folders without a record (a process died during the upload) go once abandoned; a finished
        job's folder keeps its result only (a failed run's inputs and partial files go).
        """
        names = [path.name for path in self.media.iterdir() if path.is_dir()]
        jobs = self.lookup(names)
        cleaned = 0
        for name in names:
            job, folder = jobs.get(name), self.folder(name)
            if job is None:
                if abandoned(folder, host):
                    shutil.rmtree(folder, ignore_errors=True)
                    cleaned += 1
            elif job.state in (*FINISHED, JobState.EXPIRED):
                with contextlib.suppress(FileNotFoundError):
                    if any(path.name != job.result for path in folder.iterdir()):
                        self.delete_uploads(name, keep=job.result)
                        cleaned += 1
        return cleaned

    # --- records

    @abc.abstractmethod
    def insert(self, job_id: str, kind: str, request: dict) -> Job:
        """Record a queued job."""

    def create(self, job_id: str, kind: str, request: dict) -> Job:
        """Queue a job whose uploads are already in its folder."""
        job = self.insert(job_id, kind, request)
        (self.folder(job_id) / OWNER).unlink(missing_ok=True)
        return job

    @abc.abstractmethod
    def get(self, job_id: str, request: bool = True) -> Job | None:
        """A job's record; without `request`, its request is left unread (`{}`): a status costs the same
        whatever the request holds."""

    @abc.abstractmethod
    def lookup(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """The records of those of `job_ids` that exist."""

    @abc.abstractmethod
    def list(self, *, limit: int, offset: int, state: JobState | None = None) -> tuple[list[Job], int]:
        """A page of jobs, newest first, their requests left unread (`{}`), and the total count."""

    @abc.abstractmethod
    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state, zeros included)."""

    @abc.abstractmethod
    def claim(self, worker: str) -> Job | None:
        """Atomically take the oldest queued job for `worker`, with a fresh lease."""

    @abc.abstractmethod
    def beat(
        self, job_id: str, worker: str, frames_done: int | None = None, frames_total: int | None = None
    ) -> bool:
        """Renew the lease (and record progress when given).

        Returns whether the worker should stop: a cancel was requested, or the job is no longer its.
        """

    @abc.abstractmethod
    def end(self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None) -> bool:
        """Record the end of a running job if `worker` still owns it; whether it did."""

    def finish(
        self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None
    ) -> bool:
        """End a running job (if `worker` still owns it) and delete its uploads; whether it did."""
        owned = self.end(job_id, worker, state, result=result, error=error, report=report)
        if owned:
            self.delete_uploads(job_id, keep=result)
        return owned

    @abc.abstractmethod
    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        """Give a running job back to the queue (service shutting down): it runs again from the start."""

    @abc.abstractmethod
    def release_records(self, job_id: str, worker: str, reason: str) -> JobState | None:
        """Take a running job from `worker`: cancelled if that was asked, else queued again, or failed
        once it ran MAX_ATTEMPTS times, `reason` saying why. The new state; None if `worker` had lost it.
        """

    def release(self, job_id: str, worker: str, reason: str) -> JobState | None:
        """`release_records`, and an ended job's files deleted."""
        state = self.release_records(job_id, worker, reason)
        if state in FINISHED:
            self.delete_uploads(job_id, keep=None)
        return state

    @abc.abstractmethod
    def request_cancel(self, job_id: str) -> None:
        """Cancel a queued job now, or ask a running one to stop."""

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, or ask a running one to stop; None for unknown ids."""
        self.request_cancel(job_id)
        job = self.get(job_id)
        if job is not None and job.state == JobState.CANCELLED:
            self.delete_uploads(job_id, keep=None)
        return job

    @abc.abstractmethod
    def remove(self, job_id: str) -> None:
        """Delete a finished job's record."""

    def delete(self, job_id: str) -> None:
        """Remove a finished job: its record and its media."""
        self.remove(job_id)
        self.delete_media(job_id)

    @abc.abstractmethod
    def recover_records(self, host: str) -> dict[str, JobState]:
        """Release (as `release_records` does) the running jobs whose lease lapsed.

        The new state of each, by id. `host` is this process's host name.
        """

    def recover(self, host: str) -> list[str]:
        """`recover_records`, and ended jobs' files deleted; the ids of the jobs recovered."""
        states = self.recover_records(host)
        for job_id, state in states.items():
            if state in FINISHED:
                self.delete_uploads(job_id, keep=None)
        return list(states)

    @abc.abstractmethod
    def expire_records(self, older_than: float) -> list[str]:
        """Mark jobs finished before `older_than` (epoch seconds) expired; their ids."""

    def expire(self, older_than: float) -> int:
        """Delete the media of jobs finished before `older_than` (epoch seconds); returns how many."""
        expired = self.expire_records(older_than)
        for job_id in expired:
            self.delete_media(job_id)
        return len(expired)

    @abc.abstractmethod
    def ping(self, timeout: float) -> None:
        """Raise StoreUnavailable unless the database answers within about `timeout` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the database connections."""
