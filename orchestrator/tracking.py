"""The video pipeline's work when faces are tracked: detect chunks at once, track in frame order, swap.

Chunks are detected concurrently on the pipeline's pool; their faces go through a `VideoTracker` in
frame order on the calling thread (cheap geometry), which holds `track_gap` frames back until no
later detection can fill them; the frames it releases are swapped in chunks on the pool again.
Memory: the chunks being detected, `track_gap` frames and the chunks being swapped.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from orchestrator.casting import Cast, nearest_person
from orchestrator.faces.select import select_faces
from orchestrator.faces.track import Final, VideoTracker
from orchestrator.faces.types import Face, Frame
from orchestrator.options import VideoOptions
from orchestrator.swapper import FaceSwapper

Swapped = tuple[list[Frame], int, int]  # result frames, faces found, faces swapped


class TrackedSwap:
    """Chunks in, futures of swapped chunks out, in order; the cast's identity p goes onto person p.

    With the cast's references (one per person), a track is the person whose reference its faces come
    near; without, every tracked face gets the one identity (or, for the `one` selector, one per frame).
    """

    def __init__(
        self, swapper: FaceSwapper, cast: Cast, video: VideoOptions, pool: ThreadPoolExecutor, depth: int
    ):
        self.swapper, self.cast = swapper, cast
        self.pool, self.depth = pool, depth
        references, distance = cast.references, swapper.options.reference_distance
        assign = None if references is None else nearest_person(references, distance)
        self.tracker = VideoTracker(video.track_gap, video.landmark_smoothing, assign)
        self.detecting: deque[tuple[list[Frame], Future]] = deque()
        self.ready: list[Final] = []
        self.chunk_frames = 1

    def submit(self, chunk: list[Frame]) -> list[Future]:
        """Start detecting a chunk; returns the swaps this let start (oldest frames first)."""
        self.chunk_frames = max(self.chunk_frames, len(chunk))
        self.detecting.append((chunk, self.pool.submit(self._detect, chunk)))
        started = []
        while len(self.detecting) >= self.depth:
            started += self._track_oldest()
        return started

    def finish(self) -> list[Future]:
        """After the last chunk: the swaps of every frame still held."""
        started = []
        while self.detecting:
            started += self._track_oldest()
        self.ready += self.tracker.flush()
        return started + self._swaps(final=True)

    def cancel(self) -> None:
        for _, future in self.detecting:
            future.cancel()

    def _detect(self, chunk: list[Frame]) -> list[list[Face]]:
        found = self.swapper.find_faces(chunk)
        if self.cast.references is not None:
            self.swapper.embed_faces(chunk, found)
        return found

    def _track_oldest(self) -> list[Future]:
        chunk, future = self.detecting.popleft()
        for frame, faces in zip(chunk, future.result(), strict=True):
            self.ready += self.tracker.push(faces, (frame, len(faces)))
        return self._swaps(final=False)

    def _swaps(self, final: bool) -> list[Future]:
        started = []
        while len(self.ready) >= self.chunk_frames or (final and self.ready):
            batch, self.ready = self.ready[: self.chunk_frames], self.ready[self.chunk_frames :]
            started.append(self.pool.submit(self._swap, batch))
        return started

    def _swap(self, batch: list[Final]) -> Swapped:
        options = self.swapper.options
        frames = [frame for (frame, _), _ in batch]
        found = sum(count for (_, count), _ in batch)
        pairs = [pairs for _, pairs in batch]
        if self.cast.references is None and options.selector == "one":
            pairs = [
                [
                    (face, 0)
                    for face in select_faces(
                        [f for f, _ in frame], "one", order=options.face_order, index=options.face_index
                    )
                ]
                for frame in pairs
            ]
        faces, identities = self.cast.people(pairs)
        return self.swapper.chain.run(frames, faces, identities), found, sum(map(len, faces))
