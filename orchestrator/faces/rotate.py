"""Faces at other angles: detection on frames turned by 90, 180 or 270 degrees, merged with upright.

SCRFD finds upright faces; a face lying on its side is found in the frame turned to stand it up. Each
turned pass's boxes and landmarks are turned back into the frame's pixels (landmarks keep their
meaning: the left eye stays the left eye, so alignment straightens the face), and faces found by more
than one pass are merged, keeping the pass that saw the face upright.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from orchestrator.faces.track import box_overlaps
from orchestrator.faces.types import Face, Frame

ANGLES = (0, 90, 180, 270)  # degrees clockwise
MERGE_OVERLAP = 0.4  # intersection over union above which two passes found the same face
_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def parse_angles(text: str) -> tuple[int, ...]:
    """ "0,90" -> (0, 90); ValueError naming the choices for anything else."""
    try:
        angles = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        angles = ()
    if not angles or any(angle not in ANGLES for angle in angles):
        raise ValueError(f"give angles from {', '.join(map(str, ANGLES))}, separated by commas")
    return angles


def turn(frame: Frame, angle: int) -> Frame:
    """The frame turned `angle` degrees clockwise."""
    return frame if angle == 0 else cv2.rotate(frame, _ROTATIONS[angle])


def turn_back(points: np.ndarray, angle: int, shape: tuple[int, ...]) -> np.ndarray:
    """Points [..., 2] of a frame turned by `angle`, in the pixels of the original frame of `shape`."""
    height, width = shape[:2]
    x, y = points[..., 0], points[..., 1]
    if angle == 90:
        x, y = y, height - x
    elif angle == 180:
        x, y = width - x, height - y
    elif angle == 270:
        x, y = width - y, x
    return np.stack([x, y], axis=-1).astype(np.float32)


def turned_face(face: Face, angle: int, shape: tuple[int, ...]) -> Face:
    """A face found in the frame turned by `angle`, in the original frame's pixels."""
    corners = turn_back(face.box.reshape(2, 2), angle, shape)
    box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    return Face(box, face.score, turn_back(face.landmarks, angle, shape), face.embedding)


def upright(face: Face) -> bool:
    """Whether a face stands up in its frame: its eyes above its mouth more than beside it."""
    eyes, mouth = face.landmarks[:2].mean(axis=0), face.landmarks[3:].mean(axis=0)
    down = mouth - eyes
    return bool(down[1] > abs(down[0]))


def merge_faces(faces: list[Face], overlap: float = MERGE_OVERLAP) -> list[Face]:
    """The faces with overlapping duplicates removed, best score first, the first of each kept."""
    kept: list[Face] = []
    for face in faces:
        if not kept or box_overlaps(face.box, np.stack([k.box for k in kept])).max() <= overlap:
            kept.append(face)
    return sorted(kept, key=lambda f: -f.score)


def find_at_angles(
    detect: Callable[[list[Frame]], list[list[Face]]], frames: list[Frame], angles: tuple[int, ...]
) -> list[list[Face]]:
    """The faces of each frame found at every angle, in one `detect` call for all turned frames.

    Of the same face found by several passes, the pass that saw it upright wins (SCRFD places a
    sideways face's box and landmarks less well), then the best score.
    """
    found = detect([turn(frame, angle) for angle in angles for frame in frames])
    merged = []
    for i, frame in enumerate(frames):
        passes = [(face, angle) for a, angle in enumerate(angles) for face in found[a * len(frames) + i]]
        passes.sort(key=lambda pass_: (not upright(pass_[0]), -pass_[0].score))
        merged.append(merge_faces([turned_face(face, angle, frame.shape) for face, angle in passes]))
    return merged
