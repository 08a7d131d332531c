"""`/v1/live`: live swapping over a WebSocket; `GET /v1/live` tells its limits and default options.

    client  {"type": "start", "sources": [base64 photo, ...] | "job": id, "options": {...},
             "detect_every": N, "api_key": "..."}       (text; `orchestrator.api.live_protocol.LiveStart`)
    server  {"type": "ready", "detect_every": N, "max_fps": ..., ...}
    client  a frame: JPEG or WebP bytes (binary), as often as the frame rate limit allows
    server  per frame handled: {"type": "frame", "frame": n, "faces", "swapped", "detected", "dropped",
            "ms": {"queued", "decode", "detect" | "track", "swap", "encode", "total"}}, then the swapped
            frame (binary, in the frame's format); or {"type": "error", "frame": n, "detail": "..."}
    client  {"type": "stop"}, or closes

Frames are numbered from 0 in the order they arrive; a frame that waited while a newer one came is
dropped (counted in `dropped`). `detected` is true when a frame's faces come from a detection that
just finished (the first frame's, or one run beside the frames before it), else they were tracked; `ms`
has `detect` when the frame waited for a detection, `track` otherwise.

Every refusal sends {"type": "error", "detail": ...} and closes with a code
(`orchestrator.api.live_protocol.CLOSE_*`) and a one-line reason: the API key (4401), the origin (4403), a bad
opening (4400), a message over the size limit (1009), frames over the rate limit (4429), no frame, or
no frame read, for the idle time (4408), no free session place (1013).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from orchestrator.api.live_protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_IDLE,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_TOO_FAST,
    CLOSE_TRY_LATER,
    CLOSE_UNAUTHORIZED,
    LiveInfo,
    LiveSessions,
    LiveStart,
    Refusal,
    opening_photos,
)
from orchestrator.api.services import Services, ServicesDep
from orchestrator.api.uploads import check_photos
from orchestrator.errors import FaceSwapError, InputError, TritonError
from orchestrator.live import FrameRate, FrameSlot, LiveStream, Received, open_stream
from orchestrator.options import validation_message
from orchestrator.runner import JobRequest
from orchestrator.settings import Settings
from orchestrator.swapper import FaceSwapper

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/live")  # HTTP, documented with the other /v1 routes
socket = APIRouter()  # the WebSocket: it checks its key itself (browsers cannot set headers on it)
MAX_TEXT_AFTER_OPENING = 256  # characters: the only text message then is {"type": "stop"}
NOT_A_FRAME = 'frames are binary messages; the only text message after the opening is {"type": "stop"}'


@router.get("", response_model=LiveInfo)
def live_info(services: ServicesDep) -> LiveInfo:
    """Limits and default options of live sessions on this server (the session: `WebSocket /v1/live`)."""
    return services.live.info()


def _check_origin(websocket: WebSocket, settings: Settings) -> None:
    """Browsers send their page's origin: the service's own, or one the CORS setting allows."""
    origin = websocket.headers.get("origin")
    if origin is None or origin in settings.allowed_origins or "*" in settings.allowed_origins:
        return
    if urlsplit(origin).netloc != websocket.headers.get("host"):
        raise Refusal(CLOSE_FORBIDDEN, f"the origin {origin} is not allowed")


def _check_key(websocket: WebSocket, start: LiveStart | None, settings: Settings) -> None:
    """The key of the headers or the query, else the opening's; before the opening (`start` None) only a
    key in the headers or the query is checked, so that a wrong one holds nothing."""
    if settings.api_key is None:
        return
    given = websocket.headers.get("x-api-key") or websocket.query_params.get("api_key")
    if given is None:
        if start is None:
            return
        given = start.api_key or ""
    if not secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Refusal(CLOSE_UNAUTHORIZED, "a valid API key is required (X-API-Key, ?api_key= or `api_key`)")


async def _receive(
    websocket: WebSocket, settings: Settings, waiting_for: str, seconds: float | None = None
) -> dict | None:
    """The next message within `seconds` (default: the idle time), within the size limit; None when the
    client left."""
    seconds = seconds or settings.live_idle_seconds
    with anyio.move_on_after(seconds):
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        size = len(message.get("bytes") or message.get("text") or "")
        limit = settings.live_max_message_bytes
        if size > limit:
            raise Refusal(CLOSE_TOO_BIG, f"a message of {size:,} bytes is over the limit of {limit:,}")
        return message
    raise Refusal(CLOSE_IDLE, f"no {waiting_for} for {seconds:g} s")


async def _opening(websocket: WebSocket, settings: Settings) -> LiveStart | None:
    seconds = min(settings.live_opening_seconds, settings.live_idle_seconds)
    message = await _receive(websocket, settings, "opening message", seconds)
    if message is None:
        return None
    if message.get("text") is None:
        raise Refusal(CLOSE_BAD_REQUEST, 'the first message must be the JSON opening {"type": "start", ...}')
    try:
        return LiveStart.model_validate_json(message["text"])
    except ValidationError as error:
        raise Refusal(CLOSE_BAD_REQUEST, validation_message(error)) from None


async def _waiting_opening(websocket: WebSocket, services: Services) -> LiveStart | None:
    """The opening, awaited in one of the few places for connections not yet authenticated."""
    token = object()
    try:
        services.live_openings.acquire_on_behalf_of_nowait(token)
    except anyio.WouldBlock:
        waiting = services.settings.live_max_openings
        raise Refusal(
            CLOSE_TRY_LATER, f"{waiting} connections are waiting to open a session; try later"
        ) from None
    try:
        return await _opening(websocket, services.settings)
    finally:
        services.live_openings.release_on_behalf_of(token)


def _job_sources(services: Services, job_id: str) -> list[Path]:
    job = services.store.get(job_id) if len(job_id) == 32 and job_id.isalnum() else None
    if job is None:
        raise InputError(f"no job {job_id!r}")
    sources = [
        services.store.folder(job.id) / name for name in JobRequest.model_validate(job.request).sources
    ]
    if not all(path.is_file() for path in sources):
        raise InputError(f"job {job_id} has no source photos any more: a finished job keeps only its result")
    return sources


async def _open_stream(services: Services, start: LiveStart) -> LiveStream:
    settings = services.settings
    swapper = FaceSwapper(services.triton, start.options, settings.max_image_pixels)
    detect_every = start.detect_every or settings.live_detect_every
    try:
        sources, reference = opening_photos(start)
        check_photos([*sources, *([reference] if reference else [])], settings)
        if start.job is not None:
            sources = _job_sources(services, start.job)
        return await anyio.to_thread.run_sync(
            open_stream,
            swapper,
            sources,
            reference,
            detect_every,
            settings.live_max_frame_pixels,
            limiter=services.sync_limit,
        )
    except TritonError as error:
        raise Refusal(CLOSE_TRY_LATER, str(error)) from error
    except FaceSwapError as error:
        raise Refusal(CLOSE_BAD_REQUEST, str(error)) from error


class _Session:
    """One session's frames: a receiver filling the frame slot, a worker swapping and answering."""

    def __init__(self, websocket: WebSocket, stream: LiveStream, settings: Settings):
        self.websocket = websocket
        self.stream = stream
        self.settings = settings
        self.slot = FrameSlot()
        self.sending = anyio.Lock()

    async def send(self, *messages: dict | bytes) -> None:
        """Send messages together; a client that reads nothing for the idle time is closed."""
        with anyio.move_on_after(self.settings.live_idle_seconds):
            async with self.sending:
                for message in messages:
                    if isinstance(message, bytes):
                        await self.websocket.send_bytes(message)
                    else:
                        await self.websocket.send_text(json.dumps(message))
            return
        raise Refusal(CLOSE_IDLE, f"no frame read for {self.settings.live_idle_seconds:g} s")

    async def receive_frames(self) -> None:
        rate = FrameRate(self.settings.live_max_fps)
        number = 0
        while (message := await _receive(self.websocket, self.settings, "frame")) is not None:
            if not rate.allow():  # text messages count too: each one costs an answer
                raise Refusal(
                    CLOSE_TOO_FAST, f"over the limit of {self.settings.live_max_fps:g} frames per second"
                )
            if message.get("bytes") is None and len(message["text"]) > MAX_TEXT_AFTER_OPENING:
                size = len(message["text"])
                raise Refusal(
                    CLOSE_TOO_BIG,
                    f"a text message of {size:,} characters is over the limit of {MAX_TEXT_AFTER_OPENING}",
                )
            if message.get("bytes") is not None:
                self.slot.put(Received(number, time.perf_counter(), message["bytes"]))
                number += 1
            elif _is_stop(message["text"]):
                raise Refusal(CLOSE_NORMAL, "stopped by the client")
            else:
                await self.send({"type": "error", "detail": NOT_A_FRAME})

    async def answer_frames(self) -> None:
        while True:
            frame = await self.slot.take()
            started = time.perf_counter()
            try:
                data, report = await anyio.to_thread.run_sync(self.stream.process, frame.data)
            except FaceSwapError as error:  # this frame only: a bad image, or Triton failing for now
                await self.send({"type": "error", "frame": frame.number, "detail": str(error)})
                continue
            report["ms"] = {"queued": round((started - frame.at) * 1000, 2), **report["ms"]}
            report["ms"]["total"] = round((time.perf_counter() - frame.at) * 1000, 2)
            header = {"type": "frame", "frame": frame.number, "dropped": self.slot.dropped}
            await self.send(header | report, data)

    async def run(self) -> None:
        """Until the client stops or leaves (returns) or a limit ends the session (Refusal)."""
        ended: list[BaseException] = []
        async with anyio.create_task_group() as group:

            async def part(work: Callable[[], Awaitable[None]]) -> None:
                try:
                    await work()
                except WebSocketDisconnect:
                    pass
                except Exception as error:  # ends the session; raised below, outside the task group
                    ended.append(error)
                finally:
                    group.cancel_scope.cancel()

            group.start_soon(part, self.receive_frames)
            group.start_soon(part, self.answer_frames)
        if ended:
            raise ended[0]


def _is_stop(text: str) -> bool:
    try:
        return json.loads(text) == {"type": "stop"}
    except ValueError:
        return False


async def _close(websocket: WebSocket, code: int, reason: str, detail: str) -> None:
    """Tell the reason, then close; a client that reads nothing, or has gone, is simply dropped."""
    with anyio.move_on_after(2), contextlib.suppress(WebSocketDisconnect):
        if code != CLOSE_NORMAL:
            await websocket.send_text(json.dumps({"type": "error", "detail": detail}))
        await websocket.close(code, reason)


@socket.websocket("/v1/live")
async def live_session(websocket: WebSocket) -> None:
    """A live session: frames in, swapped frames out (see the module's docstring)."""
    services: Services = websocket.app.state.services
    sessions: LiveSessions = services.live
    settings = services.settings
    await websocket.accept()
    try:
        _check_origin(websocket, settings)
        _check_key(websocket, None, settings)
        start = await _waiting_opening(websocket, services)
        if start is None:
            return
        _check_key(websocket, start, settings)
        with sessions.session():
            stream = await _open_stream(services, start)
            ready = sessions.info().model_dump(mode="json", exclude={"sessions", "max_sessions"})
            ready |= {"detect_every": stream.detect_every, "options": start.options.model_dump(mode="json")}
            await websocket.send_text(json.dumps({"type": "ready", **ready}))
            try:
                await _Session(websocket, stream, settings).run()
            finally:
                stream.close()
    except Refusal as refusal:
        await _close(websocket, refusal.code, refusal.reason, str(refusal))
    except WebSocketDisconnect:
        pass
    except Exception as error:  # a bug: logged with a reference the client is given
        reference = uuid.uuid4().hex[:12]
        log.error("live session error %s", reference, exc_info=error)
        message = f"internal error (reference {reference}); the service log has the details"
        await _close(websocket, CLOSE_INTERNAL, message, message)
