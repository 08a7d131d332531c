"""Configuration from the environment (variables prefixed FACESWAP_), with sane defaults.

Every setting can also be given on the command line; see the README's configuration table.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.images import DEFAULT_MAX_PIXELS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACESWAP_", frozen=True)

    triton_url: str = Field("localhost:8001", description="Triton gRPC address, HOST:PORT")
    triton_timeout: float = Field(120.0, gt=0, description="seconds one Triton call may take")
    triton_retries: int = Field(3, ge=0, description="retries of a Triton call that failed transiently")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="larger images are refused unread")
