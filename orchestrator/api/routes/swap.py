"""`POST /v1/swap`: swap the faces of one image and return it, synchronously."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from orchestrator.api.forms import SwapForm, check_reference, uploaded_map
from orchestrator.api.schemas import Problem
from orchestrator.api.services import ServicesDep
from orchestrator.api.uploads import store_uploads
from orchestrator.choices import IMAGE_FORMATS
from orchestrator.pipeline import swap_image
from orchestrator.plan import resolve_plan
from orchestrator.swapper import FaceSwapper

router = APIRouter(prefix="/v1")
PROBLEMS = {status: {"model": Problem} for status in (408, 413, 415, 422, 503, 507)}


@router.post(
    "/swap",
    response_class=Response,
    responses={
        200: {"content": {t: {} for t in IMAGE_FORMATS.values()}, "description": "the swapped image"},
        **PROBLEMS,
    },
)
async def swap(
    services: ServicesDep,
    source: Annotated[list[UploadFile], File(description="one or more photos of the identity to put in")],
    target: Annotated[UploadFile, File(description="the image whose faces are swapped")],
    form: Annotated[SwapForm, Form()],
    reference: Annotated[UploadFile | None, File(description="a photo of the face to select")] = None,
) -> Response:
    """Swap faces in one image and return it, in the target's format unless `output_format` is given."""
    check_reference(form, reference is not None, video=False)
    services.scratch.mkdir(parents=True, exist_ok=True)  # another host may have taken it for abandoned
    folder = Path(tempfile.mkdtemp(dir=services.scratch))

    def work() -> tuple[bytes, str, dict[str, str]]:
        plan = resolve_plan(services.triton, form.swap_options())
        uploads = store_uploads(folder, source, target, reference, False, services.settings)
        output_format = uploads.image_format(form.output_format)
        output = folder / f"result.{output_format}"
        swapper = FaceSwapper(services.triton, plan=plan, max_pixels=services.settings.max_image_pixels)
        face_map = uploaded_map(form, source, uploads)
        report = swap_image(
            swapper,
            uploads.source_paths,
            uploads.path(uploads.target),
            output,
            uploads.reference_path,
            face_map,
        )
        services.metrics.frames.inc()
        headers = {"X-Faces-Found": str(report.faces), "X-Faces-Swapped": str(report.swapped)}
        if report.warnings:
            headers["X-Warnings"] = "; ".join(report.warnings)
        return output.read_bytes(), output_format, headers

    try:
        data, output_format, headers = await anyio.to_thread.run_sync(work, limiter=services.sync_limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Response(data, media_type=IMAGE_FORMATS[output_format], headers=headers)
