"""Detection geometry: letterbox frames for `face_detect`, and read its faces back in frame pixels.

`face_detect` decodes SCRFD's anchors and suppresses overlaps in the model plane; for each
letterboxed frame it returns its best faces, best first, in canvas pixels: `boxes` [B,K,4],
`scores` [B,K], `landmarks` [B,K,5,2] and how many rows are faces, `count` [B,1].
"""

from __future__ import annotations

import cv2
import numpy as np

from orchestrator.faces.types import Face, Frame

DEFAULT_SCORE_THRESHOLD = 0.5


def letterbox(frame: Frame, canvas: Frame) -> float:
    """Resize `frame` keeping its aspect ratio into the top-left of a zeroed `canvas`, in place.

    Returns the scale from frame to canvas pixels.
    """
    height, width = canvas.shape[:2]
    frame_height, frame_width = frame.shape[:2]
    if frame_height / frame_width > height / width:
        new_height, new_width = height, int(height * frame_width / frame_height)
    else:
        new_height, new_width = int(width * frame_height / frame_width), width
    cv2.resize(frame, (new_width, new_height), dst=canvas[:new_height, :new_width])
    return new_height / frame_height


def faces_of(detections: dict[str, np.ndarray], index: int, scale: float) -> list[Face]:
    """The faces `face_detect` found in image `index` of its batch, in frame pixels, best first."""
    count = int(detections["count"][index, 0])
    boxes = detections["boxes"][index, :count] / scale
    landmarks = detections["landmarks"][index, :count] / scale
    scores = detections["scores"][index, :count]
    return [
        Face(box, float(score), points) for box, score, points in zip(boxes, scores, landmarks, strict=True)
    ]
