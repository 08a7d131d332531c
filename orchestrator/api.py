"""The HTTP API: a synchronous image swap, durable jobs for images and videos, health, metrics.

    POST   /v1/swap               multipart `source` (repeatable), `target`, [`reference`], options
                                  -> the swapped image
    POST   /v1/jobs               the same fields (image or video target) -> 202, the job
    GET    /v1/jobs               newest first, `limit` and `offset`, optional `state`
    GET    /v1/jobs/{id}          state, progress, timings, error
    GET    /v1/jobs/{id}/result   the result file
    DELETE /v1/jobs/{id}          cancel a queued or running job; delete a finished one
    GET    /healthz  /readyz  /metrics

Uploads are limited while they stream in, checked by content (Pillow, ffprobe) and stored
under names the server chooses. Errors are JSON `{"detail": ...}`, never a stack trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.faces.select import DEFAULT_REFERENCE_DISTANCE, ORDERS, SELECTORS
from orchestrator.images import ImageError, is_image
from orchestrator.jobs import FINISHED, STATES, Job, JobStore, WorkerPool, job_runner
from orchestrator.media import MediaError, probe
from orchestrator.metrics import Metrics, RequestMetrics
from orchestrator.pipeline import MASKS, FaceSwapper, SwapError, SwapOptions, swap_image
from orchestrator.settings import Settings
from orchestrator.triton import OPTIONAL_MODELS, REQUIRED_MODELS, TritonClient, TritonError

log = logging.getLogger(__name__)

IMAGE_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
VIDEO_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "mkv": "video/x-matroska", "webm": "video/webm"}
PILLOW_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # target formats kept as the default output
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the service has a key")
PRESETS = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]


class SwapForm(BaseModel):
    """Options of a swap, as multipart form fields."""

    selector: Literal[SELECTORS] = Field(
        "many", description="many: every face; one: one face; reference: faces like the reference"
    )
    face_order: Literal[ORDERS] = Field("largest", description="the order `one` picks from")
    face_index: int = Field(0, ge=0, le=10_000, description="position in `face_order` for `one`")
    reference_distance: float = Field(
        DEFAULT_REFERENCE_DISTANCE, gt=0, le=2, description="cosine distance for `reference`"
    )
    mask: Literal[MASKS] = "box"
    mask_blur: float = Field(0.3, ge=0, le=1)
    enhance: bool = Field(False, description="run the face enhancer after the swap")
    enhance_blend: int = Field(80, ge=0, le=100, description="percent of the enhanced face in the result")
    score_threshold: float = Field(
        0.5, ge=0.1, lt=1, description="face detection score threshold (lower: thousands of false faces)"
    )
    jpeg_quality: int = Field(95, ge=1, le=100)
    output_format: Literal["jpg", "png", "webp"] | None = Field(
        None, description="image result; default: the target's"
    )

    def swap_options(self, settings: Settings) -> SwapOptions:
        return SwapOptions(
            selector=self.selector,
            order=self.face_order,
            index=self.face_index,
            reference_distance=self.reference_distance,
            mask=self.mask,
            mask_blur=self.mask_blur,
            enhance=self.enhance,
            enhance_blend=self.enhance_blend,
            score_threshold=self.score_threshold,
            jpeg_quality=self.jpeg_quality,
            max_pixels=settings.max_image_pixels,
        )


class JobForm(SwapForm):
    """Options of a job; the video ones apply when the target is a video."""

    reference_frame: int | None = Field(
        None, ge=0, description="video: take the reference face from this frame"
    )
    start: float | None = Field(None, ge=0, description="video: seconds where processing starts")
    end: float | None = Field(None, gt=0, description="video: seconds where processing ends")
    video_codec: Literal["libx264", "libx265", "libvpx-vp9", "h264_nvenc"] | None = None
    crf: int = Field(18, ge=0, le=51, description="video quality, lower is better")
    preset: PRESETS = Field("veryfast", description="x264/x265 speed preset; veryfast costs half of medium")
    container: Literal["mp4", "mkv", "mov", "webm"] = Field("mp4", description="video result container")

    @model_validator(mode="after")
    def _consistent(self) -> JobForm:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("`end` must come after `start`")
        if self.container == "webm" and self.video_codec not in (None, "libvpx-vp9"):
            raise ValueError("a webm result needs the libvpx-vp9 codec")
        return self


class JobStatus(BaseModel):
    id: str
    kind: Literal["image", "video"]
    state: Literal[STATES]
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


class JobList(BaseModel):
    jobs: list[JobStatus]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    detail: str


class Readiness(BaseModel):
    ready: bool
    models: dict[str, bool]
    detail: str | None = None


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _status(job: Job) -> JobStatus:
    report = job.report
    begun = job.started_at or job.finished_at
    queued = None if begun is None else begun - job.created_at
    running = None if job.started_at is None else (job.finished_at or time.time()) - job.started_at
    return JobStatus(
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
        result_url=f"/v1/jobs/{job.id}/result" if job.state == "succeeded" else None,
    )


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit // (1024 * 1024)} MB")


class BodySizeLimit:
    """ASGI middleware: refuse a body over `limit` bytes while it streams in, never after."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": BodyTooLarge(self.limit).detail}, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge as error:
            if not started:
                await JSONResponse({"detail": error.detail}, 413)(scope, receive, send)


class ApiKeyGuard:
    """ASGI middleware: /v1 requests without the right X-API-Key get 401 before their body is read."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"x-api-key", b"")
            if not secrets.compare_digest(given, self.key):
                await JSONResponse({"detail": "a valid X-API-Key header is required"}, 401)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


def _pillow_format(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.format


def _store_upload(upload: UploadFile, folder: Path, stem: str, videos: bool) -> tuple[str, str]:
    """Copy an upload into `folder` under a name the server chooses; (file name, "image"|"video").

    The kind comes from the content, never from the client's file name or content type.
    """
    staging = folder / f"{stem}.upload"
    with open(staging, "wb") as stream:
        shutil.copyfileobj(upload.file, stream, 1 << 20)
    if staging.stat().st_size == 0:
        staging.unlink()
        raise HTTPException(422, f"{stem}: the file is empty")
    if is_image(staging):
        extension = PILLOW_FORMATS.get(_pillow_format(staging) or "", "img")
        kind = "image"
    elif videos:
        try:
            info = probe(staging)
        except MediaError as error:
            staging.unlink()
            reason = str(error).split(": ", 1)[-1]
            raise HTTPException(
                415, f"{stem}: not an image or a video this service reads ({reason})"
            ) from error
        extension = "webm" if "webm" in info.container else "mkv" if "matroska" in info.container else "mp4"
        kind = "video"
    else:
        staging.unlink()
        raise HTTPException(415, f"{stem}: not an image this service reads")
    name = f"{stem}.{extension}"
    staging.rename(folder / name)
    return name, kind


def _store_uploads(
    folder: Path, source: list[UploadFile], target: UploadFile, reference: UploadFile | None, videos: bool
) -> tuple[list[str], str, str, str | None]:
    """Store a request's uploads in `folder`: (source names, target name, target kind, reference name)."""
    sources = [_store_upload(upload, folder, f"source-{i + 1}", False)[0] for i, upload in enumerate(source)]
    target_name, kind = _store_upload(target, folder, "target", videos)
    reference_name = _store_upload(reference, folder, "reference", False)[0] if reference else None
    return sources, target_name, kind, reference_name


def _image_format(form: SwapForm, target_name: str) -> str:
    """The requested image format, else the target's own when the service writes it, else JPEG."""
    chosen = form.output_format or target_name.rsplit(".", 1)[1]
    return chosen if chosen in IMAGE_TYPES else "jpg"


def _check_reference(form: SwapForm, reference: UploadFile | None, video: bool) -> None:
    frame = getattr(form, "reference_frame", None)
    if form.selector == "reference" and reference is None and not (video and frame is not None):
        raise HTTPException(
            422, "the reference selector needs a `reference` image (or, for videos, `reference_frame`)"
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    store = JobStore(settings.data_dir)
    metrics = Metrics(store)
    triton = TritonClient(
        settings.triton_url,
        timeout=settings.triton_timeout,
        retries=settings.triton_retries,
        observe=metrics.observe_triton,
    )
    pool = WorkerPool(
        store,
        job_runner(triton, settings.max_image_pixels, store, metrics.frames.inc),
        settings.workers,
        retention=settings.result_retention_hours * 3600,
    )
    scratch = settings.data_dir / "scratch"
    sync_limit = anyio.CapacityLimiter(settings.sync_concurrency)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        shutil.rmtree(scratch, ignore_errors=True)  # left by a process that died mid-request
        scratch.mkdir(parents=True)
        pool.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(pool.shutdown, settings.shutdown_grace_seconds)
            triton.close()

    app = FastAPI(
        title="triton-faceswap",
        version="0.1.0",
        description="Face swapping served by Triton: a synchronous image swap, durable image and video jobs.",
        lifespan=lifespan,
    )

    errors = {
        404: {"model": Problem},
        413: {"model": Problem},
        415: {"model": Problem},
        422: {"model": Problem},
    }

    # ApiKeyGuard enforces the key before any body is read; the dependency puts it in the OpenAPI document.
    documented = [Security(API_KEY)] if settings.api_key is not None else []
    v1 = APIRouter(prefix="/v1", dependencies=documented, responses={401: {"model": Problem}})

    @v1.post(
        "/swap",
        response_class=Response,
        responses={
            200: {"content": {t: {} for t in IMAGE_TYPES.values()}, "description": "the swapped image"},
            **errors,
            503: {"model": Problem},
        },
    )
    async def swap(
        source: Annotated[list[UploadFile], File(description="one or more photos of the identity to put in")],
        target: Annotated[UploadFile, File(description="the image whose faces are swapped")],
        form: Annotated[SwapForm, Form()],
        reference: Annotated[UploadFile | None, File(description="a photo of the face to select")] = None,
    ) -> Response:
        """Swap faces in one image and return it, in the target's format unless `output_format` is given."""
        _check_reference(form, reference, video=False)
        options = form.swap_options(settings)
        folder = Path(tempfile.mkdtemp(dir=scratch))
        try:

            def work() -> tuple[bytes, str, dict]:
                sources, target_name, _, reference_name = _store_uploads(
                    folder, source, target, reference, False
                )
                reference_path = folder / reference_name if reference_name else None
                output_format = _image_format(form, target_name)
                output = folder / f"result.{output_format}"
                report = swap_image(
                    FaceSwapper(triton, options),
                    [folder / n for n in sources],
                    folder / target_name,
                    output,
                    reference_path,
                )
                metrics.frames.inc()
                headers = {"X-Faces-Found": str(report.faces), "X-Faces-Swapped": str(report.swapped)}
                if report.warnings:
                    headers["X-Warnings"] = "; ".join(report.warnings)
                return output.read_bytes(), output_format, headers

            data, output_format, headers = await anyio.to_thread.run_sync(work, limiter=sync_limit)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return Response(data, media_type=IMAGE_TYPES[output_format], headers=headers)

    @v1.post("/jobs", status_code=202, response_model=JobStatus, responses=errors)
    async def create_job(
        source: Annotated[list[UploadFile], File(description="one or more photos of the identity to put in")],
        target: Annotated[UploadFile, File(description="the image or video whose faces are swapped")],
        form: Annotated[JobForm, Form()],
        reference: Annotated[UploadFile | None, File(description="a photo of the face to select")] = None,
    ) -> JSONResponse:
        """Queue a swap of an image or a video; poll the job, then download its result."""
        form.swap_options(settings)  # refuse inconsistent options before storing anything
        job_id, folder = store.new_folder()
        try:
            sources, target_name, kind, reference_name = await anyio.to_thread.run_sync(
                _store_uploads, folder, source, target, reference, True
            )
            _check_reference(form, reference, video=kind == "video")
            output = f"result.{form.container if kind == 'video' else _image_format(form, target_name)}"
            job = store.create(
                job_id,
                kind,
                {
                    "sources": sources,
                    "target": target_name,
                    "reference": reference_name,
                    "output": output,
                    "options": {
                        key: value
                        for key, value in dataclasses.asdict(form.swap_options(settings)).items()
                        if key != "max_pixels"  # the service's setting, applied when the job runs
                    },
                    "video": {
                        "codec": form.video_codec,
                        "crf": form.crf,
                        "preset": form.preset,
                        "start": form.start,
                        "end": form.end,
                        "reference_frame": form.reference_frame,
                    },
                },
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        pool.wake()
        status = _status(job)
        return JSONResponse(status.model_dump(mode="json"), 202, headers={"Location": f"/v1/jobs/{job.id}"})

    @v1.get("/jobs", response_model=JobList)
    def list_jobs(
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
        state: Annotated[Literal[STATES] | None, Query()] = None,
    ) -> JobList:
        """Jobs, newest first."""
        jobs, total = store.list(limit=limit, offset=offset, state=state)
        return JobList(jobs=[_status(job) for job in jobs], total=total, limit=limit, offset=offset)

    def _job(job_id: str) -> Job:
        job = store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @v1.get("/jobs/{job_id}", response_model=JobStatus, responses={404: {"model": Problem}})
    def get_job(job_id: str) -> JobStatus:
        """A job's state, progress, timings and error."""
        return _status(_job(job_id))

    @v1.get(
        "/jobs/{job_id}/result",
        response_class=FileResponse,
        responses={
            200: {"content": {t: {} for t in (*IMAGE_TYPES.values(), *VIDEO_TYPES.values())}},
            404: {"model": Problem},
            409: {"model": Problem},
            410: {"model": Problem},
        },
    )
    def job_result(job_id: str) -> FileResponse:
        """The result file of a succeeded job."""
        job = _job(job_id)
        if job.state == "expired":
            raise HTTPException(410, "the result was deleted after the retention period")
        if job.state != "succeeded":
            raise HTTPException(
                409, f"the job is {job.state}; there is no result" + (f": {job.error}" if job.error else "")
            )
        path = store.folder(job.id) / job.result
        extension = path.suffix.lstrip(".")
        media_type = IMAGE_TYPES.get(extension) or VIDEO_TYPES[extension]
        return FileResponse(path, media_type=media_type, filename=f"swapped-{job.id[:8]}.{extension}")

    @v1.delete(
        "/jobs/{job_id}",
        status_code=202,
        response_model=JobStatus,
        responses={404: {"model": Problem}, 204: {"description": "the finished job was deleted"}},
    )
    def delete_job(job_id: str) -> Response:
        """Cancel a queued or running job (the job is returned); delete a finished one (204)."""
        job = _job(job_id)
        if job.state in (*FINISHED, "expired"):
            store.delete(job.id)
            return Response(status_code=204)
        job = store.cancel(job.id)
        return JSONResponse(_status(job).model_dump(mode="json"), 202)

    app.include_router(v1)

    @app.get("/healthz", response_model=dict[str, str])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    def readyz() -> JSONResponse:
        """Triton is reachable and every model the service needs is READY."""
        try:
            models = triton.ready_models((*REQUIRED_MODELS, *OPTIONAL_MODELS))
        except TritonError as error:
            return JSONResponse(Readiness(ready=False, models={}, detail=str(error)).model_dump(), 503)
        ready = all(models[name] for name in REQUIRED_MODELS)
        detail = None if ready else "not ready: " + ", ".join(n for n in REQUIRED_MODELS if not models[n])
        return JSONResponse(
            Readiness(ready=ready, models=models, detail=detail).model_dump(), 200 if ready else 503
        )

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus_metrics() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        """One readable line per problem, naming the field; only short scalar inputs are echoed."""
        problems = []
        for item in error.errors():
            field = ".".join(str(part) for part in item["loc"][1:]) or "body"
            given = item.get("input")
            shown = (
                f" (got {given!r})" if isinstance(given, str | int | float) and len(str(given)) <= 40 else ""
            )
            problems.append(f"{field}: {item['msg']}{shown}")
        return JSONResponse({"detail": "; ".join(problems)}, 422)

    @app.exception_handler(SwapError)
    @app.exception_handler(ImageError)
    @app.exception_handler(MediaError)
    async def unusable_input(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(error).split())}, 422)

    @app.exception_handler(TritonError)
    async def triton_down(_: Request, error: TritonError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 503)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.error("internal error %s", reference, exc_info=error)
        return JSONResponse(
            {"detail": f"internal error (reference {reference}); the service log has the details"}, 500
        )

    app.add_middleware(BodySizeLimit, limit=settings.max_upload_bytes)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyGuard, key=settings.api_key.get_secret_value())
    app.add_middleware(RequestMetrics, metrics=metrics)  # outside the guard: refusals are counted too
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
            expose_headers=["Location", "X-Faces-Found", "X-Faces-Swapped", "X-Warnings"],
        )
    return app
