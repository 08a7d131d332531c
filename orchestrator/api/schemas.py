"""Response bodies: what a job looks like to clients, readiness, and the error problem."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from orchestrator.jobs.store import Job, JobState


class Problem(BaseModel):
    detail: str


class JobStatus(BaseModel):
    id: str
    kind: Literal["image", "video"]
    state: JobState
    progress: float = Field(description="0 to 1")
    frames_done: int
    frames_total: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_seconds: float | None
    running_seconds: float | None
    attempts: int
    error: str | None
    faces: int | None
    swapped: int | None
    warnings: list[str]
    stage_seconds: dict[str, float] = Field(description="time per pipeline stage, summed over threads")
    result_url: str | None

    @classmethod
    def of(cls, job: Job) -> JobStatus:
        report = job.report
        begun = job.started_at or job.finished_at
        queued = None if begun is None else begun - job.created_at
        running = None if job.started_at is None else (job.finished_at or time.time()) - job.started_at
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            progress=round(job.progress, 4),
            frames_done=job.frames_done,
            frames_total=job.frames_total,
            created_at=_time(job.created_at),
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            queued_seconds=None if queued is None else round(queued, 3),
            running_seconds=None if running is None else round(running, 3),
            attempts=job.attempts,
            error=job.error,
            faces=report.get("faces"),
            swapped=report.get("swapped"),
            warnings=report.get("warnings", []),
            stage_seconds=report.get("seconds", {}),
            result_url=f"/v1/jobs/{job.id}/result" if job.state == JobState.SUCCEEDED else None,
        )


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    limit: int
    offset: int


class Readiness(BaseModel):
    ready: bool
    models: dict[str, bool]
    detail: str | None = None


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
