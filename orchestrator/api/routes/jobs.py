"""`/v1/jobs`: queue a swap of an image or a video, follow it, fetch its result, cancel or delete it."""

from __future__ import annotations

import shutil
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.exceptions import HTTPException
from fastapi.responses import FileResponse, JSONResponse, Response

from orchestrator.api.forms import JobForm, check_reference
from orchestrator.api.schemas import JobList, JobStatus, Problem
from orchestrator.api.services import Services, ServicesDep
from orchestrator.api.uploads import store_uploads
from orchestrator.choices import IMAGE_FORMATS, VIDEO_CONTAINERS
from orchestrator.jobs.store import FINISHED, Job, JobState
from orchestrator.runner import job_request

router = APIRouter(prefix="/v1/jobs")
MEDIA_TYPES = IMAGE_FORMATS | {name: container.media_type for name, container in VIDEO_CONTAINERS.items()}
NOT_FOUND = {404: {"model": Problem}}


@router.post(
    "",
    status_code=202,
    response_model=JobStatus,
    responses={status: {"model": Problem} for status in (408, 413, 415, 422, 507)},
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
        output = f"result.{form.container if video else uploads.image_format(form.output_format)}"
        request = job_request(
            uploads.sources,
            uploads.target,
            uploads.reference,
            output,
            form.swap_options(),
            form.video_options(),
        )
        job = store.create(job_id, uploads.kind, request)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
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
    job = services.store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
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
    return FileResponse(path, media_type=MEDIA_TYPES[extension], filename=f"swapped-{job.id[:8]}.{extension}")


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
