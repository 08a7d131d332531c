"""Request forms: the swap options as multipart form fields, plus what only the API asks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import UploadFile
from pydantic import Field, StringConstraints, model_validator

from orchestrator.api.uploads import Uploads
from orchestrator.casting import FACE_ID_LENGTH, Person, parse_map
from orchestrator.choices import DEFAULT_CONTAINER, ImageFormat, VideoContainer
from orchestrator.errors import InputError
from orchestrator.options import SwapOptions, VideoOptions

MAX_FILE_NAME = 255  # characters of an uploaded file's name, as file systems keep them
MAP_ENTRY = Annotated[str, StringConstraints(max_length=FACE_ID_LENGTH + 1 + MAX_FILE_NAME)]


class SwapForm(SwapOptions):
    """Options of a swap, as multipart form fields."""

    output_format: ImageFormat | None = Field(None, description="image result; default: the target's")
    map: list[MAP_ENTRY] = Field(
        [],
        max_length=64,
        description="one source per person, instead of the selector: FACE_ID=SOURCE, a face id from "
        "POST /v1/faces and the file name of one of the uploaded sources; repeat for each person",
    )

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


def uploaded_map(form: SwapForm, source: list[UploadFile], uploads: Uploads) -> list[Person]:
    """The form's face map, each SOURCE (an uploaded source's file name) resolved to its stored file."""
    stored = {upload.filename: path for upload, path in zip(source, uploads.source_paths, strict=True)}

    def resolve(name: str) -> Path:
        if name not in stored:
            raise InputError(f"map: no uploaded source is named {name[:60]!r}")
        return stored[name]

    return parse_map(form.map, resolve, paths=False)
