"""ASGI middleware: the body's size and time limits, the API key guard and request metrics.

Middleware rather than dependencies, because each must act before the body is read (or around the
whole request, for metrics); `create_app` adds them in the order that matters.
"""

from __future__ import annotations

import secrets
import time

import anyio
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.metrics import Metrics

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit // (1024 * 1024)} MB")


class BodyTooSlow(HTTPException):
    def __init__(self, timeout: float):
        detail = f"the request body did not arrive within {timeout:g} s"
        super().__init__(408, detail, headers={"Connection": "close"})


class BodyLimits:
    """Refuse a body over `limit` bytes, or not complete `timeout` seconds after the request began,
    while it streams in, never after: a client trickling bytes cannot hold a request open."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float):
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"detail": BodyTooLarge(self.limit).detail}, 413)(scope, receive, send)
            return
        received = 0
        deadline = time.monotonic() + self.timeout
        complete = False  # later receives wait for the client to disconnect, for as long as a response takes

        async def counted() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            try:
                with anyio.fail_after(max(deadline - time.monotonic(), 0)):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.timeout) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except (BodyTooLarge, BodyTooSlow) as error:
            if not started:
                response = JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)
                await response(scope, receive, send)


class ApiKeyGuard:
    """/v1 requests without the right X-API-Key get 401 before their body is read."""

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"x-api-key", b"")
            if not secrets.compare_digest(given, self.key):
                await JSONResponse({"detail": "a valid X-API-Key header is required"}, 401)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


class RequestMetrics:
    """Count and time every HTTP request by its method, route template and status.

    Labels take known values only (other methods count as "other", unrouted paths as "unmatched"),
    so that invented methods and paths cannot grow the number of series.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.requests.labels(method, template, str(status[0])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
