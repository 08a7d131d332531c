"""Liveness, readiness (Triton and its models, the job store and workers) and Prometheus metrics."""

from __future__ import annotations

import shutil

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.api.schemas import Readiness
from orchestrator.api.services import ServicesDep
from orchestrator.errors import TritonError
from orchestrator.jobs.store import StoreUnavailable
from orchestrator.triton import OPTIONAL_MODELS, REQUIRED_MODELS

router = APIRouter()


@router.get("/healthz", response_model=dict[str, str], responses={503: {"model": dict[str, str]}})
def healthz(services: ServicesDep) -> JSONResponse:
    """The process is alive, and so is the upkeep that replaces failed job workers."""
    if not services.pool.upkeep_alive:
        return JSONResponse({"status": "the job upkeep stopped"}, 503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Triton is reachable with every model the service needs READY; the job store and workers work."""
    problems = []
    try:
        models = services.triton.ready_models((*REQUIRED_MODELS, *OPTIONAL_MODELS))
    except TritonError as error:
        models = {}
        problems.append(str(error))
    else:
        if missing := [name for name in REQUIRED_MODELS if not models[name]]:
            problems.append("not ready: " + ", ".join(missing))
    try:
        services.store.ping(timeout=2.0)
    except StoreUnavailable as error:
        problems.append(str(error))
    free = shutil.disk_usage(services.store.media).free
    if free < services.settings.max_upload_bytes:
        problems.append(f"the data directory is full: {free / 2**20:.0f} MiB free, less than one upload")
    problems += [problem for problem in services.pool.problems() if problem not in problems]
    detail = "; ".join(problems) or None
    return JSONResponse(
        Readiness(ready=not problems, models=models, detail=detail).model_dump(), 503 if problems else 200
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
