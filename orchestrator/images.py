"""Still images in and out: size guard before decoding, EXIF orientation, odd modes, atomic writes.

Reading goes through Pillow, trying only the formats of IMAGE_READERS, and reads the header (and so
the pixel count) without decoding the pixels: an image over the configured limit is refused before it
can exhaust memory. Grayscale,
palette, 16-bit and alpha images all become 8-bit BGR frames, the alpha kept aside so a PNG
output can carry it again. Writing goes to a temporary file that is renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from orchestrator.choices import IMAGE_READERS
from orchestrator.decoding import check_decode_cost
from orchestrator.errors import FaceSwapError, ImageError, OverLimit, StorageFull
from orchestrator.faces.types import Frame

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_JPEG_QUALITY = 95
OUTPUT_FORMATS = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp"}
_ALPHA_FORMATS = {".png", ".webp"}
_READ = ", ".join(IMAGE_READERS)
_TO_BGR = {"RGBA": cv2.COLOR_RGBA2BGR, "L": cv2.COLOR_GRAY2BGR, "RGB": cv2.COLOR_RGB2BGR}
_STRIP_ROWS = 256
_JPEG_NAMES = {"JPEG": "JPEG", "MPO": "JPEG"}  # Pillow names a JPEG with a multi-picture index MPO


@dataclass(frozen=True)
class PhotoBytes:
    """An image given as bytes rather than a file (a live opening's photo), with the name messages use."""

    name: str
    data: bytes


Photo = Path | PhotoBytes


@dataclass
class Picture:
    """A decoded still image: 8-bit BGR pixels, and the alpha channel when it had one."""

    frame: Frame
    alpha: np.ndarray | None = None


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale (modes I;16*, I, F) as 8-bit L, keeping the full range."""
    values = np.asarray(image)
    values = np.clip(values, 0, 255) if image.mode == "F" else values.astype(np.uint32) >> 8
    return Image.fromarray(values.astype(np.uint8), "L")


@contextlib.contextmanager
def _opened(path: Photo, max_pixels: int) -> Iterator[Image.Image]:
    """The image with only its header read, in a format of IMAGE_READERS; OverLimit when its header
    declares more than `max_pixels` pixels, or its decoding would cost far more than its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            source = io.BytesIO(path.data) if isinstance(path, PhotoBytes) else path
            image = Image.open(source, formats=list(IMAGE_READERS))
        except Image.DecompressionBombError as error:  # Pillow's own guard, for sizes far over any limit
            pixels, limit = map(int, re.findall(r"(\d+) pixels", str(error))[:2])
            raise OverLimit(
                f"{path.name}: {pixels:,} pixels, over the limit of {min(limit, max_pixels):,}"
            ) from error
    with image:
        width, height = image.size
        if width * height > max_pixels:
            pixels = width * height
            raise OverLimit(
                f"{path.name}: {width}x{height} is {pixels:,} pixels, over the limit of {max_pixels:,}"
            )
        if image.format in _JPEG_NAMES:
            _check_cost(path)
        yield image


def _check_cost(photo: Photo) -> None:
    """OverLimit when a JPEG's decoding would cost far more than its pixels (a file is mapped, not read)."""
    if isinstance(photo, PhotoBytes):
        check_decode_cost(photo.name, photo.data)
        return
    with open(photo, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        check_decode_cost(photo.name, data)


def read_image(path: Photo, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file (or photo bytes) as it is meant to be seen (EXIF orientation applied)."""
    path = path if isinstance(path, PhotoBytes) else Path(path)
    try:
        if (len(path.data) if isinstance(path, PhotoBytes) else path.stat().st_size) == 0:
            raise ImageError(f"{path.name}: the file is empty")
        with _opened(path, max_pixels) as image:
            ImageOps.exif_transpose(image, in_place=True)
            image.load()
    except FaceSwapError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError(f"{path.name}: not an image in a format this service reads ({_READ})") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path.name}: cannot decode the image ({error})") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    return _to_bgr(image, "RGBA" if has_alpha else "L" if image.mode in ("1", "L") else "RGB")


def _to_bgr(image: Image.Image, mode: str) -> Picture:
    """The image's pixels as BGR (and alpha), converted through `mode` a strip of rows at a time: memory
    holds the decoded image and the result, never a whole intermediate copy."""
    width, height = image.size
    frame = np.empty((height, width, 3), np.uint8)
    alpha = np.empty((height, width), np.uint8) if mode == "RGBA" else None
    for top in range(0, height, _STRIP_ROWS):
        strip = image.crop((0, top, width, min(top + _STRIP_ROWS, height)))
        pixels = np.asarray(strip if strip.mode == mode else strip.convert(mode))
        rows = slice(top, top + len(pixels))
        frame[rows] = cv2.cvtColor(pixels, _TO_BGR[mode])
        if alpha is not None:
            alpha[rows] = pixels[:, :, 3]
    return Picture(frame, alpha)


def image_size(path: Photo, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int] | None:
    """The IMAGE_FORMATS name and pixel count of an image of IMAGE_READERS, from its header alone;
    None when the file is no such image (a video, say); OverLimit over `max_pixels` pixels."""
    try:
        with _opened(path, max_pixels) as image:
            return IMAGE_READERS[_JPEG_NAMES.get(image.format, image.format)], image.width * image.height
    except (OSError, ValueError, SyntaxError):  # UnidentifiedImageError among them
        return None


def output_extension(path: Path) -> str:
    """The encoder extension for an output path; ImageError for formats this service does not write."""
    extension = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if extension is None:
        raise ImageError(
            f"{Path(path).name}: unsupported output format; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    return extension


def encode_image(picture: Picture, extension: str, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Encode to `extension`'s format; PNG and WebP keep the alpha channel when there is one."""
    pixels = picture.frame
    if picture.alpha is not None and extension in _ALPHA_FORMATS:
        pixels = np.dstack([pixels, picture.alpha])
    params = []
    if extension == ".jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif extension == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    ok, data = cv2.imencode(extension, pixels, params)
    if not ok:
        raise ImageError(f"cannot encode the image as {extension}")
    return data.tobytes()


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place.

    The file is created as `open()` creates one, with the permissions the process's umask leaves.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise ImageError(f"{path}: cannot write here ({error.strerror})") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a lost mount: the user's to fix, not a bug
            if error.errno in StorageFull.ERRNOS:
                raise StorageFull(f"{path.name}: no space left on the device") from error
            raise ImageError(f"{path}: cannot write ({error.strerror or error})") from error
        raise


def write_image(path: Path, picture: Picture, quality: int = DEFAULT_JPEG_QUALITY) -> None:
    write_atomically(path, encode_image(picture, output_extension(path), quality))
