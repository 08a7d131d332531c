"""Request forms: the swap options as multipart form fields, plus what only the API asks."""

from __future__ import annotations

from pydantic import Field, model_validator

from orchestrator.choices import DEFAULT_CONTAINER, ImageFormat, VideoContainer
from orchestrator.errors import InputError
from orchestrator.options import SwapOptions, VideoOptions


class SwapForm(SwapOptions):
    """Options of a swap, as multipart form fields."""

    output_format: ImageFormat | None = Field(None, description="image result; default: the target's")

    def swap_options(self) -> SwapOptions:
        return SwapOptions.model_validate(self.model_dump(include=set(SwapOptions.model_fields)))


class JobForm(SwapForm, VideoOptions):
    """Options of a job; the video ones apply when the target is a video."""

    container: VideoContainer = Field(DEFAULT_CONTAINER, description="video result container")

    @model_validator(mode="after")
    def _codec_fits_container(self) -> JobForm:
        problem = self.codec_problem(self.container)
        if problem:
            raise ValueError(problem)
        return self

    def video_options(self) -> VideoOptions:
        return VideoOptions.model_validate(self.model_dump(include=set(VideoOptions.model_fields)))


def check_reference(form: SwapForm, reference_given: bool, video: bool) -> None:
    """The reference selector needs a reference image, or for a video job a reference frame."""
    frame = getattr(form, "reference_frame", None)
    if form.selector == "reference" and not reference_given and not (video and frame is not None):
        raise InputError(
            "the reference selector needs a `reference` image (or, for videos, `reference_frame`)"
        )
