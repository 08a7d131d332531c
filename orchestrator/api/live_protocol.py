"""The live protocol's wire: the opening message, what `GET /v1/live` tells, close codes and refusals,
and the session places of one process. The session itself is `orchestrator.api.routes.live`; the
frame work is `orchestrator.live`."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, model_validator

from orchestrator.images import PhotoBytes
from orchestrator.options import SwapOptions
from orchestrator.settings import Settings

# Close codes: the standard ones where one fits, else 4000 + the HTTP status of the same refusal.
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_IDLE = 4408
CLOSE_TOO_FAST = 4429


class Refusal(Exception):
    """The session ends with a WebSocket close `code` and a one-line `reason` (at most 123 bytes)."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason.encode()[:123].decode(errors="ignore")


def _base64(value: object) -> bytes:
    """Strict base64 (pydantic's own skips characters outside the alphabet)."""
    if not isinstance(value, str):
        raise ValueError("a base64 string is expected")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"not valid base64 ({error})") from None


Photo = Annotated[
    bytes, PlainValidator(_base64), WithJsonSchema({"type": "string", "contentEncoding": "base64"})
]


class LiveStart(BaseModel):
    """A live session's opening message: the identity, the options, the key if the service has one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["start"]
    sources: list[Photo] = Field(
        default_factory=list, max_length=16, description="source photos, base64 (JPEG, PNG, WebP)"
    )
    job: str | None = Field(
        None, max_length=32, description="instead of `sources`: the source photos of a queued or running job"
    )
    reference: Photo | None = Field(None, description="a photo of the face to swap, for `reference`")
    options: SwapOptions = SwapOptions()
    detect_every: int | None = Field(
        None, ge=1, le=100, description="detect faces every N frames (default: the service's)"
    )
    api_key: str | None = Field(
        None, max_length=1024, description="the API key, for clients that cannot set headers"
    )

    @model_validator(mode="after")
    def _one_identity(self) -> LiveStart:
        if bool(self.sources) == (self.job is not None):
            raise ValueError("give the source photos in `sources` or a job id in `job`, one of the two")
        if self.options.selector == "reference" and self.reference is None:
            raise ValueError("the reference selector needs a `reference` photo")
        return self


class LiveInfo(BaseModel):
    """What a live session gets: the limits of this process and the default options."""

    sessions: int = Field(description="live sessions open now in this process")
    max_sessions: int
    max_fps: float = Field(description="frames per second a session may send")
    max_message_bytes: int
    max_frame_pixels: int
    idle_seconds: float = Field(description="a session that sends no frame (or reads none) this long closes")
    detect_every: int = Field(description="faces are detected every N frames and tracked in between")
    options: SwapOptions = Field(description="the options a session gets unless its opening says otherwise")


class LiveSessions:
    """The live sessions of one process: how many are open, against the limit."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.open = 0

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Hold one of the process's session places; Refusal when all are taken."""
        limit = self.settings.live_max_sessions
        if self.open >= limit:
            raise Refusal(CLOSE_TRY_LATER, f"all {limit} live sessions of this server are in use; try later")
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1

    def info(self) -> LiveInfo:
        settings = self.settings
        return LiveInfo(
            sessions=self.open,
            max_sessions=settings.live_max_sessions,
            max_fps=settings.live_max_fps,
            max_message_bytes=settings.live_max_message_bytes,
            max_frame_pixels=settings.live_max_frame_pixels,
            idle_seconds=settings.live_idle_seconds,
            detect_every=settings.live_detect_every,
            options=SwapOptions(),
        )


def opening_photos(start: LiveStart) -> tuple[list[PhotoBytes], PhotoBytes | None]:
    """The opening's photos, named `source-1`, ... and `reference` in messages."""
    sources = [PhotoBytes(f"source-{i + 1}", data) for i, data in enumerate(start.sources)]
    reference = None if start.reference is None else PhotoBytes("reference", start.reference)
    return sources, reference
