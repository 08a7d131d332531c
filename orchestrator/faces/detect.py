"""Detection geometry: letterbox frames for `face_detect`, and read its faces back in frame pixels.

`face_detect` decodes SCRFD's anchors and suppresses overlaps in the model plane; for each
letterboxed frame it returns its best faces, best first, in canvas pixels: `boxes` [B,K,4],
`scores` [B,K], `landmarks` [B,K,5,2] and how many rows are faces, `count` [B,1].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from orchestrator.faces.types import Face, Frame

DEFAULT_SCORE_THRESHOLD = 0.5


def fitted(frame_shape: tuple[int, ...], size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a frame resized, keeping its aspect ratio, to fit inside `size` (H, W),
    rounded down as InsightFace's SCRFD rounds them."""
    height, width = size
    frame_height, frame_width = frame_shape[:2]
    if frame_height / frame_width > height / width:
        return height, int(height * frame_width / frame_height)
    return int(width * frame_height / frame_width), width


def letterbox(frame: Frame, canvas: Frame, size: tuple[int, int] | None = None) -> float:
    """Resize `frame` keeping its aspect ratio to fit inside `size` (default: the canvas's), into the
    top-left of a zeroed `canvas`, in place. Returns the scale from frame to canvas pixels."""
    new_height, new_width = fitted(frame.shape, size or canvas.shape[:2])
    cv2.resize(frame, (new_width, new_height), dst=canvas[:new_height, :new_width])
    return new_height / frame.shape[0]


@dataclass(frozen=True)
class DetectorInput:
    """What `face_detect` takes: frames fit inside `size` (H, W), SCRFD's input size; a detector served
    at any size (`any_size`) takes a canvas that stops at the frame rounded up to `stride`, so a 16:9
    frame costs 640x384 pixels of detector work instead of 640x640, for the same faces."""

    size: tuple[int, int]
    stride: int = 32
    any_size: bool = False

    def canvas(self, shapes: list[tuple[int, ...]]) -> tuple[int, int]:
        """The canvas (H, W) for one batch of frames of these shapes: the largest any of them needs."""
        if not self.any_size:
            return self.size
        fits = [fitted(shape, self.size) for shape in shapes]
        return tuple(-(-max(side) // self.stride) * self.stride for side in zip(*fits, strict=True))


def faces_of(detections: dict[str, np.ndarray], index: int, scale: float) -> list[Face]:
    """The faces `face_detect` found in image `index` of its batch, in frame pixels, best first."""
    count = int(detections["count"][index, 0])
    boxes = detections["boxes"][index, :count] / scale
    landmarks = detections["landmarks"][index, :count] / scale
    scores = detections["scores"][index, :count]
    return [
        Face(box, float(score), points) for box, score, points in zip(boxes, scores, landmarks, strict=True)
    ]
