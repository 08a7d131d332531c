"""How the video pipeline divides its work, chosen for the machine it runs on.

A video goes through the pipeline in chunks of frames, several at once: each chunk is one
detector request, then one swap request, then its paste-backs on the chunk's own thread (OpenCV
releases the GIL). docs/benchmarks.md has the measurements behind these choices.
"""

from __future__ import annotations

import os

FRAMES_PER_CHUNK = 4  # the smallest batch the detector's dynamic batcher prefers (modelplane.prepare)
MOST_PASTE_THREADS = 8  # paste-back stopped scaling at 8 threads on a 16-core host


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0))


def chunks_in_flight(available: int | None = None) -> int:
    """Chunks processed at once on a machine with `available` cores (default: this one's).

    One paste-back thread per two cores: ffmpeg's decoder and encoder need the rest, and on 16
    cores 8 threads pasted the most frames. Plus two chunks waiting on Triton, so that the
    detector always holds a queued request while the others paste: 3 on 2 cores, 10 on 16.
    """
    available = available or cores()
    return min(max(available // 2, 1), MOST_PASTE_THREADS) + 2
