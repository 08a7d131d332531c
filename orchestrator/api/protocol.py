"""The HTTP/1.1 protocol the service runs: uvicorn's h11 protocol with a deadline for request headers.

uvicorn has no such deadline: its keep-alive timer only runs between requests and restarts at every
byte, so a client sending a header line now and then (or nothing at all) holds a connection forever.
ASGI middleware cannot help, since it starts only once the headers are complete; the body's deadline
is middleware's (`BodyLimits`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
UNCAPPED = frozenset({"/healthz", "/readyz"})


class HeaderDeadline(H11Protocol):
    """Closes a connection whose request line and headers are not complete `header_timeout` seconds
    after it opened, or after the previous response when the next request's first byte came.

    The health routes answer beyond the connection cap: a liveness probe must not fail because clients
    hold every connection.
    """

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def limit_concurrency(self) -> int | None:
        """uvicorn's cap, read once a request's scope is known: none for the health routes."""
        scope = getattr(self, "scope", None)
        return None if scope is not None and scope["path"] in UNCAPPED else self._limit

    @limit_concurrency.setter
    def limit_concurrency(self, limit: int | None) -> None:
        self._limit = limit

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # the client has begun a request, not ended its headers
            self._arm()
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.warning(
                "closed a connection from %s: no complete headers in %g s", self.client, self.header_timeout
            )
            self.transport.close()
