"""Live swapping of a stream of frames (a webcam): the session's opening, its frame work and its limits.

A session swaps one identity onto every frame it is sent. Faces are detected every `detect_every`
frames, beside the frames rather than in their way, and followed in between (`faces.track`), so a
frame costs one swap request. Sessions run their frames on threads of their own and call Triton at
the same time, so its dynamic batcher merges the requests of all streams. A stream never queues
more than one frame behind the one in work: a newer frame replaces the waiting one, which is dropped
and counted (`FrameSlot`).

The WebSocket protocol itself (messages, close codes) is in `orchestrator.api.live_protocol` and
`orchestrator.api.routes.live`.
"""

from __future__ import annotations

import asyncio
import io
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from orchestrator.casting import Cast
from orchestrator.decoding import check_decode_cost
from orchestrator.errors import FaceSwapError, InputError
from orchestrator.faces.track import FaceTracker
from orchestrator.faces.types import Face, Frame
from orchestrator.images import Photo
from orchestrator.pipeline import reference_embedding
from orchestrator.swapper import FaceSwapper

FRAME_FORMATS = {b"\xff\xd8\xff": "jpg", b"RIFF": "webp"}  # leading bytes -> the reply's encoding


class FrameError(InputError):
    """One frame cannot be used; the session goes on."""


@dataclass(frozen=True)
class Received:
    """A frame as it arrived: its number in the session, when, and its bytes."""

    number: int
    at: float
    data: bytes


class FrameSlot:
    """The one frame waiting behind the frame in work; a newer frame replaces it and counts as dropped."""

    def __init__(self) -> None:
        self.waiting: Received | None = None
        self.dropped = 0
        self._ready = asyncio.Event()

    def put(self, frame: Received) -> None:
        if self.waiting is not None:
            self.dropped += 1
        self.waiting = frame
        self._ready.set()

    async def take(self) -> Received:
        await self._ready.wait()
        self._ready.clear()
        frame, self.waiting = self.waiting, None
        assert frame is not None
        return frame


class FrameRate:
    """A token bucket: `rate` frames per second on average, bursts of one second's worth."""

    def __init__(self, rate: float, now: float | None = None):
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.last = time.monotonic() if now is None else now

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def decode_frame(data: bytes, max_pixels: int) -> tuple[Frame, str]:
    """A JPEG or WebP frame as BGR pixels, and the format its reply is encoded in; FrameError if neither."""
    kind = next((kind for magic, kind in FRAME_FORMATS.items() if data.startswith(magic)), None)
    if kind is None or (kind == "webp" and data[8:12] != b"WEBP"):
        raise FrameError("not a JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["JPEG", "WEBP"]) as header:  # reads the size only
                width, height = header.size
    except Image.DecompressionBombError:  # Pillow's own guard, for sizes far over any limit
        raise FrameError(f"the frame declares far more than the limit of {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise FrameError(f"cannot read the image ({error})") from error
    if width * height > max_pixels:
        raise FrameError(f"{width}x{height} is over the limit of {max_pixels:,} pixels")
    check_decode_cost("frame", data)
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if frame is None:
        raise FrameError("cannot decode the image")
    return frame, kind


def encode_frame(frame: Frame, kind: str, quality: int) -> bytes:
    flag = cv2.IMWRITE_WEBP_QUALITY if kind == "webp" else cv2.IMWRITE_JPEG_QUALITY
    ok, encoded = cv2.imencode(f".{kind}", frame, [flag, quality])
    if not ok:
        raise FaceSwapError(f"cannot encode the frame as {kind}")
    return encoded.tobytes()


class LiveStream:
    """The frame work of one session, run on a worker thread one frame at a time.

    Detection runs beside the frames, on a thread of its own: a frame starts a detection when the
    last one started `detect_every` frames ago, and the first frame after it finishes takes its faces
    (matched to the tracks). The frames in between are swapped at once with the tracked faces, so a
    frame waits for the detector only when no face is known yet (the first frame, a new frame size).
    """

    def __init__(self, swapper: FaceSwapper, cast: Cast, detect_every: int, max_pixels: int):
        self.swapper = swapper
        self.cast = cast
        self.detect_every = detect_every
        self.max_pixels = max_pixels
        self.tracker = FaceTracker()
        self._detector = ThreadPoolExecutor(1, thread_name_prefix="live-detect")
        self._detecting: Future | None = None
        self._since_detection = 0
        self._shape: tuple[int, ...] | None = None

    def close(self) -> None:
        self._detector.shutdown(wait=False, cancel_futures=True)

    def _detect(self, frame: Frame) -> list[Face]:
        faces = self.swapper.find_faces([frame])[0]
        if self.cast.references is not None and faces:  # the reference selector compares identities
            self.swapper.embed_faces([frame], [faces])
        return faces

    def _faces(self, frame: Frame) -> tuple[list[Face], bool, bool]:
        """This frame's faces, whether they come from a new detection, and whether it waited for it."""
        if frame.shape != self._shape:  # the first frame, or the camera changed: nothing to follow
            self._shape = frame.shape
            self._detecting = None
            self.tracker.reset()
            self.tracker.update(self._detect(frame))
            self._since_detection = 0
            return self.tracker.faces, True, True
        fresh = self._detecting is not None and self._detecting.done()
        if fresh:
            self.tracker.update(self._detecting.result())
            self._detecting = None
        self._since_detection += 1
        if self._detecting is None and self._since_detection >= self.detect_every:
            self._detecting = self._detector.submit(self._detect, frame)
            self._since_detection = 0
        return self.tracker.faces, fresh, False

    def process(self, data: bytes) -> tuple[bytes, dict]:
        """The swapped frame, encoded as it came, and what happened to it (faces, milliseconds per stage)."""
        options = self.swapper.options
        times = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            times[stage] = round((now - clock) * 1000, 2)
            clock = now

        frame, kind = decode_frame(data, self.max_pixels)
        lap("decode")
        faces, detected, waited = self._faces(frame)
        (selected,), identities = self.cast.choose(self.swapper, [frame], [faces])
        lap("detect" if waited else "track")
        (result,) = self.swapper.chain.run([frame], [selected], identities)
        lap("swap")
        encoded = encode_frame(result, kind, options.jpeg_quality)
        lap("encode")
        return encoded, {"faces": len(faces), "swapped": len(selected), "detected": detected, "ms": times}


def open_stream(
    swapper: FaceSwapper, sources: list[Photo], reference: Photo | None, detect_every: int, max_pixels: int
) -> LiveStream:
    """A session's identity (and reference face), ready for frames of at most `max_pixels` pixels;
    InputError naming a bad photo."""
    looked_for = reference_embedding(swapper, reference)
    cast = Cast([swapper.identity(sources)], None if looked_for is None else [looked_for])
    return LiveStream(swapper, cast, detect_every, max_pixels)
