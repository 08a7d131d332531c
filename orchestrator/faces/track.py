"""Faces followed from frame to frame: detections matched to tracks by box overlap, carried in between.

Pure geometry on `Face` records, no model calls. A stream detects every few frames; `FaceTracker.update`
matches the new detections to the tracks it holds (greedy, highest overlap first), and between
detections `FaceTracker.faces` carries each track's last box and landmarks forward. A track the
detector misses is kept for `max_missed` detections before it is dropped, so a face does not flicker
back to the original when one detection fails.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

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
    previous: list[Face], current: list[Face], min_overlap: float = DEFAULT_MIN_OVERLAP
) -> list[tuple[int, int]]:
    """Pairs (previous index, current index) of the same faces: greedy by overlap, each face used once."""
    if not previous or not current:
        return []
    overlaps = box_overlaps(np.stack([f.box for f in previous]), np.stack([f.box for f in current]))
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
