"""Liveness, readiness (Triton and its models) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.api.schemas import Readiness
from orchestrator.api.services import ServicesDep
from orchestrator.errors import TritonError
from orchestrator.triton import OPTIONAL_MODELS, REQUIRED_MODELS

router = APIRouter()


@router.get("/healthz", response_model=dict[str, str])
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Triton is reachable and every model the service needs is READY."""
    try:
        models = services.triton.ready_models((*REQUIRED_MODELS, *OPTIONAL_MODELS))
    except TritonError as error:
        return JSONResponse(Readiness(ready=False, models={}, detail=str(error)).model_dump(), 503)
    ready = all(models[name] for name in REQUIRED_MODELS)
    detail = None if ready else "not ready: " + ", ".join(n for n in REQUIRED_MODELS if not models[n])
    return JSONResponse(
        Readiness(ready=ready, models=models, detail=detail).model_dump(), 200 if ready else 503
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
