"""`POST /v1/faces`: the faces of an uploaded image or video frame, each with an id usable as a reference."""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
import cv2
import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.schemas import Problem
from orchestrator.api.services import ServicesDep
from orchestrator.api.uploads import store_upload
from orchestrator.casting import face_id
from orchestrator.faces.select import order_faces
from orchestrator.faces.types import Face, Frame
from orchestrator.media import probe
from orchestrator.options import MAX_OPTION_TEXT, SwapOptions, parse_options
from orchestrator.pipeline import FaceSwapper, video_frame

router = APIRouter(prefix="/v1")
THUMBNAIL_SIDE = 96  # pixels, the longest side
THUMBNAIL_MARGIN = 0.2  # of the face box's size, on each side


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


def thumbnail(frame: Frame, face: Face) -> str:
    """The face's box with a margin, at most THUMBNAIL_SIDE pixels a side, as a JPEG data URL."""
    x1, y1, x2, y2 = face.box
    margin = THUMBNAIL_MARGIN * max(x2 - x1, y2 - y1)
    height, width = frame.shape[:2]
    left, top = int(max(x1 - margin, 0)), int(max(y1 - margin, 0))
    right, bottom = int(min(x2 + margin, width)), int(min(y2 + margin, height))
    crop = frame[top : max(bottom, top + 1), left : max(right, left + 1)]
    scale = min(THUMBNAIL_SIDE / max(crop.shape[:2]), 1.0)
    crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(crop), [cv2.IMWRITE_JPEG_QUALITY, 85])[1]
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()


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
        swapper = FaceSwapper(services.triton, options, settings.max_image_pixels)
        path = folder / name
        if kind == "image":
            frame = swapper.read(path).frame
        else:
            frame = video_frame(probe(path, settings.video_limits), form.frame)
        faces = order_faces(swapper.find_faces([frame])[0], "left-right")
        swapper.embed_faces([frame], [faces])
        found = [
            FoundFace(
                id=face_id(face.embedding),
                box=[round(float(v), 2) for v in face.box],
                landmarks=[[round(float(v), 2) for v in point] for point in face.landmarks],
                score=round(face.score, 4),
                thumbnail=thumbnail(frame, face),
            )
            for face in faces
        ]
        return FacesFound(width=frame.shape[1], height=frame.shape[0], faces=found)

    try:
        return await anyio.to_thread.run_sync(work, limiter=services.sync_limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
