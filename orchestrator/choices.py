"""The product's vocabulary: every named choice a user makes, its values and its default, in one place.

The CLI's `choices`, the API's form fields (through `orchestrator.options`), the pipeline and the
ffmpeg wrappers all read these tables, so a name or a value cannot drift between them. Adding a video
codec or a container is one line in its table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Selector = Literal["many", "one", "reference"]
FaceOrder = Literal["largest", "smallest", "left-right", "right-left", "top-bottom", "bottom-top"]
MaskKind = Literal["box", "occlusion", "region", "area", "insightface"]  # `--mask` takes a list of them
EncoderPreset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]
ImageFormat = Literal["jpg", "png", "webp"]

SELECTORS: tuple[str, ...] = get_args(Selector)
FACE_ORDERS: tuple[str, ...] = get_args(FaceOrder)
MASKS: tuple[str, ...] = get_args(MaskKind)
ENCODER_PRESETS: tuple[str, ...] = get_args(EncoderPreset)  # fastest first
IMAGE_FORMATS: dict[str, str] = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
# The still images read, by Pillow's format name, with the IMAGE_FORMATS name each is written back as.
# No other Pillow plugin is tried: EPS, PDF and the like reach other programs or rarely kept decoders.
IMAGE_READERS: dict[str, str] = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}

# A video encoder and the family of options `media.encoder_args` gives it (rate control, presets).
VIDEO_CODECS: dict[str, str] = {
    "libx264": "x264",
    "libx265": "x265",
    "libvpx-vp9": "vpx",
    "h264_nvenc": "nvenc",
}
VideoCodec = Literal[tuple(VIDEO_CODECS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class Container:
    """A video result container: ffmpeg's muxer, its media type and the codecs it takes (None: any)."""

    muxer: str
    media_type: str
    codecs: tuple[str, ...] | None = None


VIDEO_CONTAINERS: dict[str, Container] = {
    "mp4": Container("mp4", "video/mp4"),
    "mov": Container("mov", "video/quicktime"),
    "mkv": Container("matroska", "video/x-matroska"),
    "webm": Container("webm", "video/webm", codecs=("libvpx-vp9",)),
}
VideoContainer = Literal[tuple(VIDEO_CONTAINERS)]  # type: ignore[valid-type]

# The videos read, by ffmpeg's demuxer name (ffprobe's format_name), with the extension an upload is
# stored under: the containers of VIDEO_CONTAINERS and no other. ffmpeg and ffprobe open nothing else,
# since other demuxers (HLS and DASH playlists, concat scripts, image sequences, SDP, IMF) read further
# files or URLs that the input names.
VIDEO_DEMUXERS: dict[str, str] = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "mkv"}

# What is read, in the words the CLI, the API and the README all use.
ACCEPTED_IMAGES = "JPEG, PNG or WebP images"
ACCEPTED_VIDEOS = f"{', '.join(name.upper() for name in VIDEO_CONTAINERS)} videos"
# ffprobe's demuxers of single images and image sequences: a file it reads so is no image we read.
IMAGE_DEMUXERS = ("image2", "_pipe")


def accepted(videos: bool) -> str:
    """What a refused file should have been."""
    return f"it reads {ACCEPTED_IMAGES}" + (f" and {ACCEPTED_VIDEOS}" if videos else "")


def unreadable(label: str, reason: str, videos: bool) -> str:
    """The refusal of a file that is no image (or video) read here; `reason` is ffprobe's verdict."""
    demuxer = reason.split(" ", 1)[0]
    if any(sign in demuxer for sign in IMAGE_DEMUXERS):  # named like an image, but none Pillow reads
        reason = "its content is none of these images, whatever its name says"
    what = "an image or a video" if videos else "an image"
    return (
        f"{label}: not {what} this service reads"
        + (f" ({reason})" if reason else "")
        + f"; {accepted(videos)}"
    )


DEFAULT_PRESET: EncoderPreset = "veryfast"  # half medium's encode cost, files no larger (docs/benchmarks.md)
DEFAULT_CONTAINER = "mp4"


def default_codec(container: str) -> str:
    """The encoder a container gets when none is asked for: its first codec, else libx264."""
    codecs = VIDEO_CONTAINERS[container].codecs
    return codecs[0] if codecs else "libx264"


def container_of(suffix: str) -> str | None:
    """The container name of an output file's extension (".mp4" -> "mp4"), None if not a video one."""
    name = suffix.lower().lstrip(".")
    return name if name in VIDEO_CONTAINERS else None


# Pixel boost: the side faces are aligned at before the swapper, in k² interleaved crops of its size
# (FaceFusion's choices; the swapper's crop size must divide it).
PixelBoost = Literal[256, 384, 512, 768, 1024]
PIXEL_BOOSTS: tuple[int, ...] = get_args(PixelBoost)
