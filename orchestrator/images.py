"""Still images in and out: size guard before decoding, EXIF orientation, odd modes, atomic writes.

Reading goes through Pillow, which reads the header (and so the pixel count) without decoding the
pixels: an image over the configured limit is refused before it can exhaust memory. Grayscale,
palette, 16-bit and alpha images all become 8-bit BGR frames, the alpha kept aside so a PNG
output can carry it again. Writing goes to a temporary file that is renamed into place.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from orchestrator.errors import ImageError
from orchestrator.faces.types import Frame

DEFAULT_MAX_PIXELS = 100_000_000
DEFAULT_JPEG_QUALITY = 95
OUTPUT_FORMATS = {".jpg": ".jpg", ".jpeg": ".jpg", ".png": ".png", ".webp": ".webp", ".bmp": ".bmp"}
_ALPHA_FORMATS = {".png", ".webp"}


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


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode an image file as it is meant to be seen (EXIF orientation applied)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path.name}: the file is empty")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{path.name}: {width}x{height} is {width * height:,} pixels, "
                        f"over the limit of {max_pixels:,}"
                    )
                image = ImageOps.exif_transpose(image)
                image.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own guard, for sizes far over any limit
        size = error.args[0].split(" exceeds")[0].lower()
        raise ImageError(f"{path.name}: {size}, over the limit") from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{path.name}: not an image in a format this service reads") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path.name}: cannot decode the image ({error})") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    frame = np.ascontiguousarray(pixels[:, :, 2::-1])
    return Picture(frame, np.ascontiguousarray(pixels[:, :, 3]) if has_alpha else None)


def is_image(path: Path) -> bool:
    """Whether the file's content is a still image Pillow knows (a video is not), reading the header only."""
    try:
        with Image.open(path):
            return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False


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
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as error:
        raise ImageError(f"{path}: cannot write here ({error.strerror})") from error
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a lost mount: the user's to fix, not a bug
            raise ImageError(f"{path}: cannot write ({error.strerror or error})") from error
        raise


def write_image(path: Path, picture: Picture, quality: int = DEFAULT_JPEG_QUALITY) -> None:
    write_atomically(path, encode_image(picture, output_extension(path), quality))
