"""Uploads into a folder under names the server chooses, their kind told by content, never by name."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile
from PIL import Image

from orchestrator.choices import IMAGE_FORMATS
from orchestrator.errors import InputError, MediaError, UnsupportedMedia
from orchestrator.images import is_image
from orchestrator.media import probe

PILLOW_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # target formats kept as the default output


@dataclass(frozen=True)
class Uploads:
    """A request's stored files, by name inside their folder."""

    folder: Path
    sources: list[str]
    target: str
    kind: str  # the target's: "image" or "video"
    reference: str | None

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def source_paths(self) -> list[Path]:
        return [self.folder / name for name in self.sources]

    @property
    def reference_path(self) -> Path | None:
        return None if self.reference is None else self.folder / self.reference

    def image_format(self, requested: str | None) -> str:
        """The requested image format, else the target's own when the service writes it, else JPEG."""
        chosen = requested or self.target.rsplit(".", 1)[1]
        return chosen if chosen in IMAGE_FORMATS else "jpg"


def _pillow_format(path: Path) -> str | None:
    with Image.open(path) as image:
        return image.format


def store_upload(upload: UploadFile, folder: Path, stem: str, videos: bool) -> tuple[str, str]:
    """Copy an upload into `folder` as `stem.<its format>`; (file name, "image" | "video")."""
    staging = folder / f"{stem}.upload"
    with open(staging, "wb") as stream:
        shutil.copyfileobj(upload.file, stream, 1 << 20)
    if staging.stat().st_size == 0:
        staging.unlink()
        raise InputError(f"{stem}: the file is empty")
    if is_image(staging):
        extension = PILLOW_FORMATS.get(_pillow_format(staging) or "", "img")
        kind = "image"
    elif videos:
        try:
            info = probe(staging)
        except MediaError as error:
            staging.unlink()
            reason = str(error).split(": ", 1)[-1]
            raise UnsupportedMedia(
                f"{stem}: not an image or a video this service reads ({reason})"
            ) from error
        extension = "webm" if "webm" in info.container else "mkv" if "matroska" in info.container else "mp4"
        kind = "video"
    else:
        staging.unlink()
        raise UnsupportedMedia(f"{stem}: not an image this service reads")
    name = f"{stem}.{extension}"
    staging.rename(folder / name)
    return name, kind


def store_uploads(
    folder: Path, source: list[UploadFile], target: UploadFile, reference: UploadFile | None, videos: bool
) -> Uploads:
    """Store a request's uploads in `folder`; a video target only when `videos` is allowed."""
    sources = [store_upload(upload, folder, f"source-{i + 1}", False)[0] for i, upload in enumerate(source)]
    target_name, kind = store_upload(target, folder, "target", videos)
    reference_name = store_upload(reference, folder, "reference", False)[0] if reference else None
    return Uploads(folder, sources, target_name, kind, reference_name)
