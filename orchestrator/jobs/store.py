"""The job store's interface: job records, their states, and the media folder of each job.

A job is a record in a database and a folder `<media>/<id>/` holding its uploads (server-chosen
names) and, once done, its result. Workers claim queued jobs atomically, so any number of worker
threads and processes can share one store. A job that was running when its process died is found by
its stale heartbeat (or its dead process id on this host) and queued again, up to `MAX_ATTEMPTS`
runs, then failed with the reason. Finished jobs' media are deleted after the retention period; the
record stays, in state `expired`. Implementations fill in the record keeping; the media folders are
handled here.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

MAX_ATTEMPTS = 2
STALE_AFTER = 60.0  # seconds without a heartbeat before a running job counts as orphaned


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # finished, and its media deleted after the retention period


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass
class Job:
    id: str
    kind: str  # image | video
    state: JobState
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

    def __post_init__(self) -> None:
        self.state = JobState(self.state)

    @property
    def progress(self) -> float:
        if self.state == JobState.SUCCEEDED:
            return 1.0
        return self.frames_done / self.frames_total if self.frames_total else 0.0


def orphaned(worker: str | None, heartbeat: float | None, host: str, now: float) -> bool:
    """A running job whose worker is a dead process on this host, or silent for too long.

    Workers are named `host:pid:n`.
    """
    if worker is not None and worker.split(":")[0] == host:
        pid = int(worker.split(":")[1])
        with contextlib.suppress(OSError):
            os.kill(pid, 0)
            return heartbeat is None or now - heartbeat > STALE_AFTER
        return True
    return heartbeat is None or now - heartbeat > STALE_AFTER


class JobStore(abc.ABC):
    """Job records (in the implementation's database) and one media folder per job under `media`."""

    def __init__(self, media: Path):
        self.media = Path(media)
        self.media.mkdir(parents=True, exist_ok=True)

    # --- media folders

    def folder(self, job_id: str) -> Path:
        return self.media / job_id

    def new_folder(self) -> tuple[str, Path]:
        """A fresh job id and its (empty) media folder, for the uploads before the job is queued."""
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        folder.mkdir()
        return job_id, folder

    def delete_uploads(self, job_id: str, keep: str | None) -> None:
        """Remove a job's files but `keep` (its result)."""
        folder = self.folder(job_id)
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name != keep:
                    path.unlink(missing_ok=True)

    def delete_media(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    # --- records

    @abc.abstractmethod
    def create(self, job_id: str, kind: str, request: dict) -> Job:
        """Queue a job whose uploads are already in its folder."""

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def list(self, *, limit: int, offset: int, state: JobState | None = None) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and the total count."""

    @abc.abstractmethod
    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state, zeros included)."""

    @abc.abstractmethod
    def claim(self, worker: str) -> Job | None:
        """Atomically take the oldest queued job for `worker`."""

    @abc.abstractmethod
    def beat(self, job_id: str, worker: str, frames_done: int, frames_total: int) -> bool:
        """Record progress and liveness; returns whether a cancel was requested (or the job was lost)."""

    @abc.abstractmethod
    def end(self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None) -> None:
        """Record the end of a running job, if `worker` still owns it."""

    def finish(
        self, job_id: str, worker: str, state: JobState, *, result=None, error=None, report=None
    ) -> None:
        """End a running job (if `worker` still owns it) and delete its uploads."""
        self.end(job_id, worker, state, result=result, error=error, report=report)
        self.delete_uploads(job_id, keep=result)

    @abc.abstractmethod
    def requeue(self, job_id: str, worker: str, reason: str) -> None:
        """Give a running job back to the queue (service shutting down): it runs again from the start."""

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
    def recover(self, host: str) -> list[str]:
        """Queue again (or fail, after MAX_ATTEMPTS runs) jobs left running by a dead process; their ids."""

    @abc.abstractmethod
    def expire_records(self, older_than: float) -> list[str]:
        """Mark jobs finished before `older_than` (epoch seconds) expired; their ids."""

    def expire(self, older_than: float) -> int:
        """Delete the media of jobs finished before `older_than` (epoch seconds); returns how many."""
        expired = self.expire_records(older_than)
        for job_id in expired:
            self.delete_media(job_id)
        return len(expired)
