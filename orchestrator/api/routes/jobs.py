"""`/v1/jobs`: queue a swap of an image or a video, follow it (polling or events), fetch its result,
cancel or delete it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Annotated, BinaryIO

import anyio
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import Field

from orchestrator.api.forms import JobForm, check_reference, uploaded_map
from orchestrator.api.schemas import JobList, JobStatus, Problem
from orchestrator.api.services import Services, ServicesDep
from orchestrator.api.uploads import store_uploads
from orchestrator.choices import IMAGE_FORMATS, VIDEO_CONTAINERS
from orchestrator.errors import StorageFull, TritonError
from orchestrator.jobs.store import FINISHED, Job, JobState
from orchestrator.plan import resolve_plan
from orchestrator.runner import JobRequest

router = APIRouter(prefix="/v1/jobs")
MEDIA_TYPES = IMAGE_FORMATS | {name: container.media_type for name, container in VIDEO_CONTAINERS.items()}
NOT_FOUND = {404: {"model": Problem}}


@router.post(
    "",
    status_code=202,
    response_model=JobStatus,
    responses={status: {"model": Problem} for status in (408, 413, 415, 422, 503, 507)},
)
async def create_job(
    services: ServicesDep,
    source: Annotated[list[UploadFile], File(description="one or more photos of the identity to put in")],
    target: Annotated[UploadFile, File(description="the image or video whose faces are swapped")],
    form: Annotated[JobForm, Form()],
    reference: Annotated[UploadFile | None, File(description="a photo of the face to select")] = None,
) -> JSONResponse:
    """Queue a swap of an image or a video; poll the job, then download its result."""
    store = services.store
    job_id, folder = store.new_folder()
    try:
        uploads = await anyio.to_thread.run_sync(
            store_uploads, folder, source, target, reference, True, services.settings
        )
        video = uploads.kind == "video"
        check_reference(form, reference is not None, video=video)
        # What Triton cannot serve is refused now, not when the job runs; a job sent while Triton is
        # unreachable is queued all the same and resolved when it runs.
        with contextlib.suppress(TritonError):
            await anyio.to_thread.run_sync(resolve_plan, services.triton, form.swap_options())
        output = f"result.{form.container if video else uploads.image_format(form.output_format)}"
        request = JobRequest.of(
            uploads.sources,
            uploads.target,
            uploads.reference,
            output,
            form.swap_options(),
            form.video_options(),
            uploaded_map(form, source, uploads),
        )
        job = store.create(job_id, uploads.kind, request.model_dump(mode="json"))
    except BaseException as error:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in StorageFull.ERRNOS:
            raise StorageFull() from error
        raise
    services.pool.wake()
    status = JobStatus.of(job).model_dump(mode="json")
    return JSONResponse(status, 202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("", response_model=JobList)
def list_jobs(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    state: Annotated[JobState | None, Query()] = None,
) -> JobList:
    """Jobs, newest first."""
    jobs, total = services.store.list(limit=limit, offset=offset, state=state)
    return JobList(jobs=[JobStatus.of(job) for job in jobs], total=total, limit=limit, offset=offset)


def _job(services: Services, job_id: str) -> Job:
    """The job's record, its request left unread."""
    job = services.store.get(job_id, request=False) if len(job_id) == 32 and job_id.isalnum() else None
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.get("/{job_id}", response_model=JobStatus, responses=NOT_FOUND)
def get_job(services: ServicesDep, job_id: str) -> JobStatus:
    """A job's state, progress, timings and error."""
    return JobStatus.of(_job(services, job_id))


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        200: {"content": {media_type: {} for media_type in MEDIA_TYPES.values()}},
        **NOT_FOUND,
        409: {"model": Problem},
        410: {"model": Problem},
    },
)
def job_result(services: ServicesDep, job_id: str) -> FileResponse:
    """The result file of a succeeded job."""
    job = _job(services, job_id)
    if job.state == JobState.EXPIRED:
        raise HTTPException(410, "the result was deleted after the retention period")
    if job.state != JobState.SUCCEEDED:
        raise HTTPException(
            409, f"the job is {job.state}; there is no result" + (f": {job.error}" if job.error else "")
        )
    path = services.store.folder(job.id) / job.result
    extension = path.suffix.lstrip(".")
    try:  # opened before it is served: a deletion from now on cannot cut the answer short
        stream = open(path, "rb")  # noqa: SIM115 (closed when the answer ends)
    except FileNotFoundError:
        raise HTTPException(404, f"no job {job_id!r}") from None
    headers = {
        "Content-Length": str(os.fstat(stream.fileno()).st_size),
        "Content-Disposition": f'attachment; filename="swapped-{job.id[:8]}.{extension}"',
    }
    return StreamingResponse(_chunks(stream), media_type=MEDIA_TYPES[extension], headers=headers)


async def _chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    """An open file's bytes, read on a thread a chunk at a time; the file is closed at the end."""
    try:
        while data := await anyio.to_thread.run_sync(stream.read, 1 << 20):
            yield data
    finally:
        stream.close()


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=JobStatus,
    responses={**NOT_FOUND, 204: {"description": "the finished job was deleted"}},
)
def delete_job(services: ServicesDep, job_id: str) -> Response:
    """Cancel a queued or running job (the job is returned); delete a finished one (204)."""
    job = _job(services, job_id)
    if job.state in (*FINISHED, JobState.EXPIRED):
        services.store.delete(job.id)
        return Response(status_code=204)
    job = services.store.cancel(job.id)
    return JSONResponse(JobStatus.of(job).model_dump(mode="json"), 202)


EVENT_POLL = 0.5  # seconds between reads of the job store
KEEP_ALIVE = 15.0  # seconds of silence before a comment line keeps proxies from closing the stream


class JobProgress(JobStatus):
    """A job's status with its rate and the time left, both from the store (any replica can serve them)."""

    frames_per_second: float | None = Field(description="frames done per second since the job started")
    seconds_left: float | None = Field(description="at that rate, until the job ends")

    @classmethod
    def of(cls, job: Job) -> JobProgress:
        rate = left = None
        sampled = job.finished_at or job.heartbeat  # when frames_done was last written
        if job.frames_done and job.started_at is not None and (sampled or 0) > job.started_at:
            rate = job.frames_done / (sampled - job.started_at)
            remaining = max(job.frames_total - job.frames_done, 0)
            left = 0.0 if job.state == JobState.SUCCEEDED else remaining / rate
        return cls(
            **JobStatus.of(job).model_dump(),
            frames_per_second=None if rate is None else round(rate, 3),
            seconds_left=None if left is None else round(left, 1),
        )


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "model": JobProgress}, **NOT_FOUND},
)
async def job_events(services: ServicesDep, job_id: str) -> StreamingResponse:
    """Server-sent events: `progress` (a JobProgress) whenever the job's state or frames change, then
    `end` once it is finished (`gone` if it is deleted meanwhile)."""
    job = await anyio.to_thread.run_sync(_job, services, job_id)

    async def events() -> AsyncIterator[str]:
        current: Job | None = job
        yield f"retry: {int(EVENT_POLL * 4000)}\n\n"
        last, quiet = None, 0.0
        while current is not None:
            ended = current.state not in (JobState.QUEUED, JobState.RUNNING)
            seen = (current.state, current.frames_done, current.frames_total)
            if seen != last or ended:
                data = JobProgress.of(current).model_dump_json()
                yield f"event: {'end' if ended else 'progress'}\ndata: {data}\n\n"
                last, quiet = seen, 0.0
            elif quiet >= KEEP_ALIVE:
                yield ": waiting\n\n"
                quiet = 0.0
            if ended:
                return
            await anyio.sleep(EVENT_POLL)
            quiet += EVENT_POLL
            current = await anyio.to_thread.run_sync(services.store.get, job_id, False)
        yield f"event: gone\ndata: {json.dumps({'detail': f'job {job_id} was deleted'})}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: pass events through at once
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
