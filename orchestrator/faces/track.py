"""Faces followed from frame to frame: detections matched to tracks by box overlap, carried in between.

Pure geometry on `Face` records, no model calls. A stream detects every few frames; `FaceTracker.update`
matches the new detections to the tracks it holds (greedy, highest overlap first), and between
detections `FaceTracker.faces` carries each track's last box and landmarks forward. A track the
detector misses is kept for `max_missed` detections before it is dropped, so a face does not flicker
back to the original when one detection fails.

`VideoTracker` follows the faces of every frame of a video in order, with a bounded look-ahead, and
fills in the frames where the detector missed a face from its neighbours.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from orchestrator.faces.identity import face_distance
from orchestrator.faces.types import Face

DEFAULT_MIN_OVERLAP = 0.3  # intersection over union for the same face in neighbouring detections
DEFAULT_MAX_MISSED = 2


def box_overlaps(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `first` [N,4] with every box in `second` [M,4]: [N,M]."""
    first = np.asarray(first, np.float32).reshape(-1, 4)
    second = np.asarray(second, np.float32).reshape(-1, 4)
    top_left = np.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = np.minimum(first[:, None, 2:], second[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)

    def area(boxes: np.ndarray) -> np.ndarray:
        return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)

    union = area(first)[:, None] + area(second)[None, :] - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1e-9), 0.0)


def match_faces(
    previous: list[Face],
    current: list[Face],
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    max_distance: float | None = None,
) -> list[tuple[int, int]]:
    """Pairs (previous index, current index) of the same faces: greedy by overlap, each face used once.

    With `max_distance`, two faces that both have embeddings further apart than it never pair.
    """
    if not previous or not current:
        return []
    overlaps = box_overlaps(np.stack([f.box for f in previous]), np.stack([f.box for f in current]))
    if max_distance is not None:
        for i, j in np.ndindex(overlaps.shape):
            a, b = previous[i].embedding, current[j].embedding
            if a is not None and b is not None and face_distance(a, b) > max_distance:
                overlaps[i, j] = 0.0
    pairs = []
    used_previous: set[int] = set()
    used_current: set[int] = set()
    for flat in np.argsort(-overlaps, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, overlaps.shape)
        if overlaps[i, j] < min_overlap:
            break
        if i not in used_previous and j not in used_current:
            pairs.append((int(i), int(j)))
            used_previous.add(int(i))
            used_current.add(int(j))
    return pairs


def match_nearby(
    previous: list[Face], current: list[Face], matched: list[tuple[int, int]], max_distance: float | None
) -> list[tuple[int, int]]:
    """More pairs among the faces `matched` left: centres less than a face width apart and sizes within
    a factor 1.5, nearest first (a face moving faster than its boxes overlap, before its speed is known)."""
    left = [i for i in range(len(previous)) if i not in {i for i, _ in matched}]
    right = [j for j in range(len(current)) if j not in {j for _, j in matched}]
    candidates = []
    for i in left:
        a = previous[i]
        for j in right:
            b = current[j]
            width, other = a.box[2] - a.box[0], b.box[2] - b.box[0]
            apart = float(np.linalg.norm((a.box[:2] + a.box[2:] - b.box[:2] - b.box[2:]) / 2))
            alike = a.embedding is None or b.embedding is None or max_distance is None
            alike = alike or face_distance(a.embedding, b.embedding) <= max_distance
            if apart < width and 1 / 1.5 < other / max(width, 1e-6) < 1.5 and alike:
                candidates.append((apart, i, j))
    pairs: list[tuple[int, int]] = []
    for _, i, j in sorted(candidates):
        if all(i != p and j != q for p, q in pairs):
            pairs.append((i, j))
    return pairs


@dataclass
class Track:
    """One face followed across frames: a stable id, its latest face, and detections it was missed in."""

    id: int
    face: Face
    missed: int = 0


class FaceTracker:
    """The faces of a stream between detections; `update` on detection frames, `faces` on the others."""

    def __init__(self, min_overlap: float = DEFAULT_MIN_OVERLAP, max_missed: int = DEFAULT_MAX_MISSED):
        self.min_overlap = min_overlap
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self._ids = itertools.count()

    @property
    def faces(self) -> list[Face]:
        """The tracked faces, carried forward from their last detection (oldest track first)."""
        return [track.face for track in self.tracks]

    def update(self, detected: list[Face]) -> list[Face]:
        """Match a detection's faces to the tracks; returns the tracked faces for this frame.

        A matched track takes the new face (keeping the embedding it had, when the new face has none);
        an unmatched detection starts a track; a track missed more than `max_missed` times is dropped.
        """
        pairs = match_faces(self.faces, detected, self.min_overlap)
        matched = {j: i for i, j in pairs}
        for i, j in pairs:
            track = self.tracks[i]
            if detected[j].embedding is None:
                detected[j].embedding = track.face.embedding
            track.face, track.missed = detected[j], 0
        kept = []
        for i, track in enumerate(self.tracks):
            if i not in matched.values():
                track.missed += 1
            if track.missed <= self.max_missed:
                kept.append(track)
        kept += [Track(next(self._ids), face) for j, face in enumerate(detected) if j not in matched]
        self.tracks = kept
        return self.faces

    def reset(self) -> None:
        self.tracks = []


# --- video: faces followed through every frame, misses filled from neighbours

DEFAULT_TRACK_GAP = 5  # frames a face may be missed and still be filled in
TRACK_DISTANCE = 0.8  # cosine distance beyond which two embedded faces are not the same person
Final = tuple[object, list[tuple[Face, "int | None"]]]  # a final frame: its item, (face, person) pairs


@dataclass
class _Followed:
    """A video track: its last detected face and frame, its motion, the person it was assigned to."""

    face: Face
    seen: int
    person: int | None = None
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # box pixels a frame

    def expected(self, index: int) -> Face:
        """Where the face should be in frame `index`, moving on as it moved (for matching)."""
        shift = self.velocity * (index - self.seen)
        landmarks = self.face.landmarks + (shift[:2] + shift[2:]) / 2
        return Face(self.face.box + shift, self.face.score, landmarks, self.face.embedding)


class VideoTracker:
    """Every face of a video, frame by frame in order, with `gap` frames of look-ahead.

    `push` takes one frame's detections and returns the frames that are now final, oldest first, each
    as (its item, [(face, person)]). A face missed for up to `gap` frames and found again gets
    landmarks and box interpolated between its neighbours in the frames between. `smoothing` (0..1)
    weighs each track's previous landmarks into the new ones against jitter. `assign(face)` names the
    person a detected face is (None: nobody); a track keeps the first person assigned to any of its
    faces, in all its frames, earlier ones included as far as the look-ahead reaches. Without
    `assign`, every face is person 0. Memory: `gap` + 1 frames' faces and items.
    """

    def __init__(
        self,
        gap: int = DEFAULT_TRACK_GAP,
        smoothing: float = 0.0,
        assign: Callable[[Face], int | None] | None = None,
        min_overlap: float = DEFAULT_MIN_OVERLAP,
        max_distance: float = TRACK_DISTANCE,
    ):
        self.gap, self.smoothing, self.assign = gap, smoothing, assign
        self.min_overlap, self.max_distance = min_overlap, max_distance
        self.index = -1
        self.tracks: dict[int, _Followed] = {}
        self._ids = itertools.count()
        self._pending: deque[tuple[object, list[tuple[_Followed, Face]]]] = deque()

    def push(self, detected: list[Face], item: object = None) -> list[Final]:
        self.index += 1
        live = [(key, track) for key, track in self.tracks.items() if self.index - track.seen <= self.gap + 1]
        self.tracks = dict(live)
        expected = [track.expected(self.index) for _, track in live]
        pairs = match_faces(expected, detected, self.min_overlap, self.max_distance)
        pairs += match_nearby(expected, detected, pairs, self.max_distance)
        found: list[tuple[_Followed, Face]] = []
        for i, j in pairs:
            track = live[i][1]
            face = detected[j]
            if face.embedding is None:
                face.embedding = track.face.embedding
            if self.smoothing > 0:  # against the motion-compensated previous landmarks: no lag
                face.landmarks = (
                    self.smoothing * expected[i].landmarks + (1 - self.smoothing) * face.landmarks
                ).astype(np.float32)
            self._fill(track, face)
            track.velocity = ((face.box - track.face.box) / (self.index - track.seen)).astype(np.float32)
            track.face, track.seen = face, self.index
            found.append((track, face))
        paired = {j for _, j in pairs}
        for j, face in enumerate(detected):
            if j not in paired:
                track = self.tracks[next(self._ids)] = _Followed(face, self.index)
                found.append((track, face))
        if self.assign is not None:
            for track, face in found:
                if track.person is None:
                    track.person = self.assign(face)
        self._pending.append((item, found))
        return [self._final() for _ in range(len(self._pending) - self.gap)]

    def flush(self) -> list[Final]:
        """The frames still held, at the end of the video."""
        return [self._final() for _ in range(len(self._pending))]

    def _fill(self, track: _Followed, face: Face) -> None:
        """Faces for the frames between a track's last detection and this one, interpolated; none in
        a frame where another face already stands there."""
        missed = self.index - track.seen - 1
        for step in range(1, missed + 1):
            weight = step / (missed + 1)
            between = Face(
                ((1 - weight) * track.face.box + weight * face.box).astype(np.float32),
                min(track.face.score, face.score),
                ((1 - weight) * track.face.landmarks + weight * face.landmarks).astype(np.float32),
                track.face.embedding,
            )
            frame = self._pending[len(self._pending) - missed - 1 + step][1]
            present = [other.box for _, other in frame]
            if not present or box_overlaps(between.box, np.stack(present)).max() < self.min_overlap:
                frame.append((track, between))

    def _final(self) -> Final:
        item, faces = self._pending.popleft()
        return item, [(face, track.person if self.assign else 0) for track, face in faces]
