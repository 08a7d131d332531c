"""What the model plane serves: every role's models, their families, crop sizes and readiness."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from pydantic import BaseModel, Field

from orchestrator.api.schemas import Problem
from orchestrator.api.services import ServicesDep
from orchestrator.served import served_models

router = APIRouter(prefix="/v1/models", tags=["models"])


class ServedModelInfo(BaseModel):
    ensemble: str = Field(description="the Triton model requests go to")
    role: str = Field(description="detector, recognizer, swapper or enhancer")
    default: bool = Field(description="what a request that names no swapper or enhancer gets")
    ready: bool = Field(description="READY in Triton")
    model: str | None = Field(None, description="the name a request's `swapper` or `enhancer` gives")
    family: str | None = None
    size: int | None = Field(None, description="the square crop size, pixels (the detector's input height)")
    template: str | None = Field(None, description="the five-point alignment template")
    source: str | None = Field(None, description="swappers: what the source input is")
    latent_model: str | None = None
    weight_target: str | None = Field(
        None, description="swappers: the target face's face_embed output that swap_weight mixes in"
    )
    source_template: str | None = None
    source_size: int | None = None


class ServedModels(BaseModel):
    models: list[ServedModelInfo]


@router.get("", response_model=ServedModels, responses={503: {"model": Problem}})
def list_models(services: ServicesDep) -> ServedModels:
    """The models Triton serves, by role; a swap's `swapper` and `enhancer` name one of them."""
    models = served_models(services.triton, everything=True)
    return ServedModels(models=[ServedModelInfo(**asdict(model)) for model in models])
