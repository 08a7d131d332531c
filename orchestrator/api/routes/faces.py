"""`POST /v1/faces`: the faces of an uploaded image or video frame, each with an id usable as a reference."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.analysis import FaceAnalyser
from orchestrator.api.schemas import Problem
from orchestrator.api.services import ServicesDep
from orchestrator.api.uploads import store_upload
from orchestrator.casting import face_id
from orchestrator.faces.thumbnail import thumbnail
from orchestrator.media import probe
from orchestrator.options import MAX_OPTION_TEXT, SwapOptions, parse_options
from orchestrator.pipeline import video_frame

router = APIRouter(prefix="/v1")


class FacesForm(BaseModel):
    """Which frame of a video, and how faces are found (as for a swap)."""

    model_config = ConfigDict(allow_inf_nan=False, str_max_length=MAX_OPTION_TEXT)
    frame: int = Field(0, ge=0, le=10_000_000, description="video: the frame whose faces are listed")
    score_threshold: float = SwapOptions.model_fields["score_threshold"]
    detector_angles: str = SwapOptions.model_fields["detector_angles"]


class FoundFace(BaseModel):
    id: str = Field(description="opaque; the reference of a `map` entry (FACE_ID=SOURCE)")
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels")
    landmarks: list[list[float]] = Field(description="eyes, nose tip, mouth corners: [x, y] in pixels")
    score: float
    thumbnail: str = Field(description="the face, as a data: URL of a small JPEG")


class FacesFound(BaseModel):
    width: int
    height: int
    faces: list[FoundFace] = Field(description="left to right")


@router.post(
    "/faces",
    response_model=FacesFound,
    responses={status: {"model": Problem} for status in (408, 413, 415, 422, 503, 507)},
)
async def list_faces(
    services: ServicesDep,
    target: Annotated[UploadFile, File(description="the image or video whose faces are listed")],
    form: Annotated[FacesForm, Form()],
) -> FacesFound:
    """The faces of an image or of one video frame, left to right, with the ids a face map takes."""
    settings = services.settings
    options = parse_options(SwapOptions, form.model_dump(exclude={"frame"}))
    services.scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=services.scratch))

    def work() -> FacesFound:
        name, kind, _ = store_upload(target, folder, "target", True, settings)
        analyser = FaceAnalyser(services.triton, options, settings.max_image_pixels)
        path = folder / name
        if kind == "image":
            frame = analyser.read(path).frame
        else:
            frame = video_frame(probe(path, settings.video_limits), form.frame)
        found = [
            FoundFace(
                id=face_id(face.embedding),
                box=[round(float(v), 2) for v in face.box],
                landmarks=[[round(float(v), 2) for v in point] for point in face.landmarks],
                score=round(face.score, 4),
                thumbnail=thumbnail(frame, face),
            )
            for face in analyser.listed_faces(frame)
        ]
        return FacesFound(width=frame.shape[1], height=frame.shape[0], faces=found)

    try:
        return await anyio.to_thread.run_sync(work, limiter=services.sync_limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
