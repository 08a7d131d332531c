"""The child processes a test watches (ffmpeg, ffprobe), listed without racing the ones that end."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


def children_running(pid: int, program: str, *, argument: str | None = None) -> list[psutil.Process]:
    """Descendants of `pid` whose program name starts with `program` (and, when given, with an
    argument containing `argument`). A child that ends between the listing and the reading is left out."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if child.name().startswith(program) and (
                argument is None or any(argument in arg for arg in child.cmdline())
            ):
                found.append(child)
        except psutil.Error:
            continue
    return found


@contextmanager
def sigint_default() -> Iterator[None]:
    """SIGINT handled in this process while the block runs, so that the children it starts take it
    at its default (a handler becomes the default on exec) however the tests were started: a run
    started in the background inherits SIGINT ignored, and its children would ignore it too."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
