"""Whether the model plane can take work now, asked at most once a second however many ask.

Workers claim no job while Triton is unreachable or its required models are not READY, and a job
whose Triton went away waits for it (`wait`) instead of failing; the API answers such requests 503
with `Retry-After` and the one-line reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from orchestrator.triton import TritonClient

CHECK_EVERY = 1.0  # seconds a verdict is reused
RETRY_AFTER = 5  # seconds a refused client is told to wait


class TritonHealth:
    """A cached verdict on `triton.unavailable()`: None when Triton can take work, else why not."""

    def __init__(self, triton: TritonClient, every: float = CHECK_EVERY):
        self.triton = triton
        self.every = every
        self._lock = threading.Lock()
        self._checked = -float("inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._checked >= self.every:
                self._problem = self.triton.unavailable(timeout=min(self.every, 1.0))
                self._checked = time.monotonic()
            return self._problem

    def wait(self, limit: float, stop: Callable[[float], bool]) -> str | None:
        """Wait up to `limit` seconds for Triton to take work: None once it does, else the last
        reason. `stop(seconds)` pauses and returns True when the caller must give up at once."""
        deadline = time.monotonic() + limit
        while (problem := self.problem()) is not None:
            left = deadline - time.monotonic()
            if left <= 0 or stop(min(self.every, left)):
                return problem
        return None
