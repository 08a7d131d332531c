"""Uploads into a folder under names the server chooses, their kind told by content, never by name.

Each file is judged as it is stored, against the limits of the settings: images by their header
(format and declared size), videos by probing (container, length, frames, frame size, timestamps),
and the request as a whole (sources, pixels of all its images).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fastapi import UploadFile

from orchestrator.choices import IMAGE_FORMATS, VIDEO_DEMUXERS, unreadable
from orchestrator.errors import InputError, MediaError, OverLimit, StorageFull, UnsupportedMedia
from orchestrator.images import Photo, image_size
from orchestrator.media import probe
from orchestrator.settings import Settings


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


def _copy(upload: UploadFile, path: Path) -> None:
    try:
        with open(path, "wb") as stream:
            shutil.copyfileobj(upload.file, stream, 1 << 20)
    except OSError as error:
        if error.errno in StorageFull.ERRNOS:
            raise StorageFull("the server has no space left for this upload; try again later") from error
        raise


def store_upload(
    upload: UploadFile, folder: Path, stem: str, videos: bool, settings: Settings
) -> tuple[str, str, int]:
    """Copy an upload into `folder` as `stem.<its format>`: (file name, "image" | "video", image pixels).

    It is judged under the name `stem`, which its errors show with the name it was uploaded under;
    the caller removes the folder of a refused request.
    """
    label = f"{stem} {upload.filename[:60]!r}" if upload.filename else stem
    staging = folder / stem
    _copy(upload, staging)
    if staging.stat().st_size == 0:
        raise InputError(f"{stem}: the file is empty")
    image = image_size(staging, settings.max_image_pixels)
    if image is not None:
        name, kind, pixels = f"{stem}.{image[0]}", "image", image[1]
    elif videos:
        try:
            info = probe(staging, settings.video_limits)
        except (MediaError, UnsupportedMedia) as error:
            reason = str(error).removeprefix(f"{stem}: ")
            raise UnsupportedMedia(unreadable(label, reason, videos=True)) from error
        name, kind, pixels = f"{stem}.{VIDEO_DEMUXERS[info.container]}", "video", 0
    else:
        raise UnsupportedMedia(unreadable(label, "", videos=False))
    staging.rename(folder / name)
    return name, kind, pixels


def store_uploads(
    folder: Path,
    source: list[UploadFile],
    target: UploadFile,
    reference: UploadFile | None,
    videos: bool,
    settings: Settings,
) -> Uploads:
    """Store a request's uploads in `folder`; a video target only when `videos` is allowed.

    OverLimit as soon as the request holds more sources, or more image pixels, than the settings allow.
    """
    if len(source) > settings.max_sources:
        raise OverLimit(f"{len(source)} source images, over the limit of {settings.max_sources}")
    total = 0

    def store(upload: UploadFile, stem: str, video: bool) -> tuple[str, str]:
        nonlocal total
        name, kind, pixels = store_upload(upload, folder, stem, video, settings)
        total += pixels
        if total > settings.max_request_pixels:
            limit = settings.max_request_pixels
            raise OverLimit(f"the request's images hold {total:,} pixels, over the limit of {limit:,}")
        return name, kind

    sources = [store(upload, f"source-{i + 1}", False)[0] for i, upload in enumerate(source)]
    target_name, kind = store(target, "target", videos)
    reference_name = store(reference, "reference", False)[0] if reference else None
    return Uploads(folder, sources, target_name, kind, reference_name)


def check_photos(paths: list[Photo], settings: Settings) -> None:
    """Photos given as bytes (a live opening's) against the limits of an upload: at most
    `max_sources` sources (a path named `reference` is not one), each an image read from its header
    within the pixel and decoding limits, and all of them within the request's pixel budget."""
    sources = [path for path in paths if path.name != "reference"]  # the opening's names
    if len(sources) > settings.max_sources:
        raise OverLimit(f"{len(sources)} source images, over the limit of {settings.max_sources}")
    total = 0
    for path in paths:
        image = image_size(path, settings.max_image_pixels)
        if image is None:
            raise UnsupportedMedia(f"{path.name}: not an image this service reads")
        total += image[1]
        if total > settings.max_request_pixels:
            limit = settings.max_request_pixels
            raise OverLimit(f"the request's images hold {total:,} pixels, over the limit of {limit:,}")
