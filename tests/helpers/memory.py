"""Peak resident memory of a process and of its children (ffmpeg, ffprobe), sampled while a test runs."""

from __future__ import annotations

import threading

import psutil


class PeakMemory:
    """Samples resident memory every 20 ms in a thread: `own` is the process's peak, `child` the peak of
    its largest descendant, `total` the peak of the process and all its descendants together (bytes).
    Children are ffmpeg and ffprobe; a child's first moments, before it runs its program, are not
    counted, as they only share the parent's memory."""

    def __init__(self, pid: int, interval: float = 0.02, program: str | None = None):
        self.process = psutil.Process(pid)
        self.program = program  # when given, only the descendants running it count
        self.interval = interval
        self.own = self.child = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        name = self.process.name()
        while not self._stop.is_set():
            own = self.process.memory_info().rss
            children = []
            for child in self.process.children(recursive=True):
                try:
                    # A fork not yet replaced by its program only shares our pages.
                    if child.name() != name and self.program in (None, child.name()):
                        children.append(child.memory_info().rss)
                except psutil.NoSuchProcess:  # it ended between the listing and the reading
                    continue
            self.own = max(self.own, own)
            self.child = max([self.child, *children])
            self.total = max(self.total, own + sum(children))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def __str__(self) -> str:
        own, child = self.own / 2**20, self.child / 2**20
        return f"{self.total / 2**20:.0f} MB (service {own:.0f} MB, largest child {child:.0f} MB)"
