"""SCRFD detection geometry: letterbox the frame, decode the raw outputs, suppress overlaps.

The `face_detect` ensemble returns SCRFD's raw outputs named `<kind>_<stride>` (scores, boxes,
landmarks); distances are in units of the stride from each anchor's cell corner. Outputs may come
with or without a batch axis ([A, C] or [1, A, C]); the anchor count per cell is derived from them.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from orchestrator.faces.types import Face, Frame

DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_NMS_THRESHOLD = 0.4
MAX_FACES = 256  # per frame: a very low threshold must not turn noise into thousands of swaps


def letterbox(frame: Frame, size: tuple[int, int]) -> tuple[Frame, float]:
    """Resize keeping the aspect ratio into the top-left of a black (height, width) canvas.

    Returns the canvas and the scale from frame to canvas pixels.
    """
    height, width = size
    frame_height, frame_width = frame.shape[:2]
    if frame_height / frame_width > height / width:
        new_height, new_width = height, int(height * frame_width / frame_height)
    else:
        new_height, new_width = int(width * frame_height / frame_width), width
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(frame, (new_width, new_height))
    return canvas, new_height / frame_height


@cache
def anchor_centers(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """[cells * anchors, 2] (x, y) of every anchor, in input pixels, row-major as SCRFD orders them."""
    ys, xs = np.mgrid[: height // stride, : width // stride]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, anchors, axis=0)


def strides_of(outputs: dict[str, np.ndarray]) -> list[int]:
    return sorted(int(name.split("_")[1]) for name in outputs if name.startswith("scores_"))


def decode(
    outputs: dict[str, np.ndarray], size: tuple[int, int], threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates scoring at least `threshold`: boxes [K,4], scores [K], landmarks [K,5,2] in input pixels."""
    height, width = size
    boxes, scores, points = [], [], []
    for stride in strides_of(outputs):
        score = outputs[f"scores_{stride}"].reshape(-1)
        cells = (height // stride) * (width // stride)
        centers = anchor_centers(height, width, stride, score.size // cells)
        keep = np.flatnonzero(score >= threshold)
        if keep.size == 0:
            continue
        distance = outputs[f"boxes_{stride}"].reshape(-1, 4)[keep] * stride
        center = centers[keep]
        boxes.append(np.concatenate([center - distance[:, :2], center + distance[:, 2:]], axis=1))
        offsets = outputs[f"landmarks_{stride}"].reshape(-1, 5, 2)[keep] * stride
        points.append(center[:, None, :] + offsets)
        scores.append(score[keep])
    if not scores:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(points).astype(np.float32),
    )


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best first.

    Areas count pixels inclusively (+1), as InsightFace's SCRFD does, so both keep the same boxes.
    """
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        overlap = width * height
        iou = overlap / (areas[best] + areas[rest] - overlap)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def faces_from_outputs(
    outputs: dict[str, np.ndarray],
    size: tuple[int, int],
    scale: float,
    threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_threshold: float = DEFAULT_NMS_THRESHOLD,
) -> list[Face]:
    """Faces of one letterboxed frame in frame pixels, highest score first, at most MAX_FACES."""
    boxes, scores, points = decode(outputs, size, threshold)
    if len(scores) > 8 * MAX_FACES:  # keep NMS cheap: overlapping candidates come a few per face
        best = np.argpartition(-scores, 8 * MAX_FACES)[: 8 * MAX_FACES]
        boxes, scores, points = boxes[best], scores[best], points[best]
    keep = nms(boxes, scores, nms_threshold)[:MAX_FACES]
    return [Face(boxes[i] / scale, float(scores[i]), points[i] / scale) for i in keep]
