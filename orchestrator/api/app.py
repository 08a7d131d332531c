"""`create_app`: the short place that assembles the service from its parts."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import Depends, FastAPI, Security
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader

from orchestrator.api.docs import add_docs
from orchestrator.api.errors import add_error_handlers
from orchestrator.api.live_protocol import LiveSessions
from orchestrator.api.middleware import ApiKeyGuard, BodyLimits, BrowserGuard, RequestMetrics
from orchestrator.api.routes import faces, health, jobs, live, models, swap, web
from orchestrator.api.schemas import Problem
from orchestrator.api.services import Services
from orchestrator.api.strict_forms import strict_form
from orchestrator.jobs.sqlite import SQLiteJobStore
from orchestrator.jobs.store import OWNER, JobStore, abandoned, process_name
from orchestrator.jobs.workers import WorkerPool
from orchestrator.metrics import Metrics
from orchestrator.runner import job_runner
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient
from orchestrator.triton_health import TritonHealth

log = logging.getLogger(__name__)
TAGS = [
    {"name": "swap", "description": "one image swapped synchronously"},
    {"name": "jobs", "description": "image and video swaps as durable jobs: progress, results, cancel"},
    {"name": "faces", "description": "the faces of a target, with ids for a face map"},
    {"name": "models", "description": "the models Triton serves, by role"},
    {"name": "live", "description": "live swapping over a WebSocket: its limits and defaults"},
    {"name": "health", "description": "liveness, readiness and metrics"},
]
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="required when the service has a key")


def open_store(settings: Settings) -> JobStore:
    """PostgreSQL when FACESWAP_DATABASE_URL is set (replicas share it), else SQLite in the data directory."""
    lease, timeout = settings.job_lease_seconds, settings.database_timeout
    if settings.database_url is None:
        return SQLiteJobStore(settings.data_dir, lease=lease, timeout=timeout)
    from orchestrator.jobs.postgres import PostgresJobStore

    url = settings.database_url.get_secret_value()
    media = settings.data_dir / "jobs"
    return PostgresJobStore(url, media, lease=lease, timeout=timeout, pool_size=settings.workers + 10)


def build_services(settings: Settings) -> Services:
    store = open_store(settings)
    metrics = Metrics(store)
    triton = TritonClient(
        settings.triton_url,
        timeout=settings.triton_timeout,
        retries=settings.triton_retries,
        observe=metrics.observe_triton,
    )
    health = TritonHealth(triton)
    pool = WorkerPool(
        store,
        job_runner(triton, settings.max_image_pixels, store, metrics.frames.inc),
        settings.workers,
        retention=settings.result_retention_hours * 3600,
        stuck_after=settings.worker_stuck_seconds,
        gate=health,
        gate_wait=settings.triton_wait_seconds,
    )
    scratch = settings.data_dir / "scratch" / process_name().replace(":", "-")  # replicas share data_dir
    return Services(
        settings,
        store,
        triton,
        pool,
        metrics,
        scratch,
        anyio.CapacityLimiter(settings.sync_concurrency),
        LiveSessions(settings),
        anyio.CapacityLimiter(settings.live_max_openings),
        health,
    )


def clear_scratch(scratch: Path) -> None:
    """Make this process's scratch folder; remove those left by processes that died mid-request."""
    host = socket.gethostname()
    if scratch.parent.is_dir():
        for folder in scratch.parent.iterdir():
            if folder == scratch or abandoned(folder, host):
                shutil.rmtree(folder, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / OWNER).write_text(process_name())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = build_services(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        clear_scratch(services.scratch)
        if problem := await anyio.to_thread.run_sync(services.health.problem):
            log.warning("%s; jobs wait in the queue until it takes work", problem)
        services.pool.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(services.pool.shutdown, settings.shutdown_grace_seconds)
            services.triton.close()
            services.store.close()

    app = FastAPI(
        title="triton-faceswap",
        version="0.1.0",
        description="Face swapping served by Triton: a synchronous image swap, durable image and video jobs, "
        "live swapping over a WebSocket (`/v1/live`), and a web page at `/`.",
        lifespan=lifespan,
        docs_url=None,  # served from the package's own files (orchestrator.api.docs)
        redoc_url=None,
        openapi_tags=TAGS,
    )
    app.state.services = services

    # ApiKeyGuard enforces the key before any body is read; the dependency puts it in the OpenAPI document.
    documented = [Security(API_KEY)] if settings.api_key is not None else []
    documented.append(Depends(strict_form))
    for tag, resource in (
        ("swap", swap.router),
        ("jobs", jobs.router),
        ("live", live.router),
        ("models", models.router),
        ("faces", faces.router),
    ):  # each carries its full path, for metrics
        tags = [] if tag in resource.tags else [tag]
        app.include_router(resource, tags=tags, dependencies=documented, responses={401: {"model": Problem}})
    app.include_router(live.socket)  # checks the key itself: browsers cannot set headers on a WebSocket
    app.include_router(health.router, tags=["health"])
    app.include_router(web.router)
    add_docs(app)
    add_error_handlers(app)

    app.add_middleware(BodyLimits, limit=settings.max_upload_bytes, timeout=settings.body_timeout_seconds)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyGuard, key=settings.api_key.get_secret_value())
    app.add_middleware(
        BrowserGuard,
        hosts=settings.host_names,
        origins=settings.allowed_origins,
        keyed=settings.api_key is not None,
    )
    app.add_middleware(
        RequestMetrics, metrics=services.metrics
    )  # outside the guard: refusals are counted too
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Content-Type"],
            expose_headers=["Location", "X-Faces-Found", "X-Faces-Swapped", "X-Warnings"],
        )
    return app
