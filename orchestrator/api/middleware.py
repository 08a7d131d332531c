"""ASGI middleware: the body's size and time limits, the API key guard, the browser guard and request
metrics.

Middleware rather than dependencies, because each must act before the body is read (or around the
whole request, for metrics); `create_app` adds them in the order that matters.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

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


UNGUARDED = frozenset({"/healthz", "/readyz", "/metrics"})  # probes and scrapers name any host
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def host_name(host: str) -> str:
    """A Host header's name, without its port: `[::1]:8080` -> `::1`, `Example.org.:80` -> `example.org`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return (host.rpartition(":")[0] if host.count(":") == 1 else host).rstrip(".")


class BrowserGuard:
    """What a browser may be made to send from another site.

    A request naming a host outside `hosts` (None: any) is refused: a page whose name was rebound to
    this service's address (DNS rebinding) cannot reach it. Without an API key, a state-changing
    request that a browser sends from another site (by Sec-Fetch-Site, else by its Origin, unless the
    CORS setting allows that origin) is refused: a plain form POST from any page cannot queue work.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, origins: list[str], keyed: bool):
        self.app = app
        self.hosts = hosts
        self.origins = set(origins)
        self.keyed = keyed

    def _problem(self, scope: Scope) -> str | None:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return f"the host {host[:100]!r} is not one this service answers to (FACESWAP_ALLOWED_HOSTS)"
        if self.keyed or scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            return None  # the live socket checks its origin itself
        origin = headers.get("origin")
        allowed = origin is not None and (origin in self.origins or "*" in self.origins)
        if headers.get("sec-fetch-site") == "cross-site" and not allowed:
            return "a request from another site's page is refused (set an API key, or FACESWAP_CORS_ORIGINS)"
        if origin is not None and not allowed and urlsplit(origin).netloc != host:
            return f"a request from the origin {origin[:100]!r} is refused (FACESWAP_CORS_ORIGINS)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in UNGUARDED:
            problem = self._problem(scope)
            if problem is not None:
                if scope["type"] == "websocket":  # before the handshake: the client gets a 403
                    await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
                else:
                    await JSONResponse({"detail": problem}, 403)(scope, receive, send)
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
