"""The reference implementation: InsightFace's own classes on the same ONNX files the repository serves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from insightface.app.common import Face as ReferenceFace
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils.face_align import estimate_norm

DETECTOR_SIZE = (640, 640)


class InsightFaceReference:
    """Detector, recognizer and swapper used the way InsightFace's examples use them."""

    def __init__(self, files: dict[str, Path]):
        self.detector = SCRFD(str(files["detector"]))
        self.detector.prepare(-1, input_size=DETECTOR_SIZE, det_thresh=0.5)
        self.recognizer = ArcFaceONNX(str(files["recognizer"]))
        self.recognizer.prepare(-1)
        self.swapper = INSwapper(str(files["swapper"]))

    def faces(self, frame: np.ndarray) -> list[ReferenceFace]:
        """Every face, best score first, each with its embedding."""
        boxes, landmarks = self.detector.detect(frame, input_size=DETECTOR_SIZE)
        faces = [
            ReferenceFace(bbox=b[:4], kps=k, det_score=b[4]) for b, k in zip(boxes, landmarks, strict=True)
        ]
        for face in faces:
            self.recognizer.get(frame, face)
        return faces

    def largest_face(self, frame: np.ndarray) -> ReferenceFace:
        return max(self.faces(frame), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))

    def swap(self, frame: np.ndarray, source: ReferenceFace) -> np.ndarray:
        """Every face swapped to `source`, one `INSwapper.get(paste_back=True)` per face."""
        result = frame
        for face in self.faces(frame):
            result = self.swapper.get(result, face, source, paste_back=True)
        return result


def insightface_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """InsightFace's alignment of five landmarks onto its template at `size` (frame -> crop)."""
    return estimate_norm(np.asarray(landmarks, np.float64), size)


def insightface_crop(frame: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The aligned crop at `size` on InsightFace's matrix, edges replicated, and that matrix."""
    matrix = insightface_matrix(landmarks, size)
    crop = cv2.warpAffine(
        frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, matrix


def feathered_box(size: int, blur: float = 0.3) -> np.ndarray:
    """FaceFusion's static box mask (`create_static_box_mask`, no padding), then scaled so that it
    reaches zero at the crop's edge, as the product's documentation of its box mask says."""
    blur_amount = int(size * 0.5 * blur)
    border = max(blur_amount // 2, 1)
    mask = np.ones((size, size), np.float32)
    mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = 0, 0, 0, 0
    mask = cv2.GaussianBlur(mask, (0, 0), blur_amount * 0.25)
    edge = max(mask[0].max(), mask[-1].max(), mask[:, 0].max(), mask[:, -1].max())
    return np.clip((mask - edge) / (mask.max() - edge), 0, 1)


def paste_whole_frame(
    frame: np.ndarray, crop: np.ndarray, mask: np.ndarray, matrix: np.ndarray
) -> np.ndarray:
    """FaceFusion's original paste-back: crop and mask warped back over the whole frame, then blended."""
    inverse = cv2.invertAffineTransform(matrix)
    size = frame.shape[1::-1]
    weight = cv2.warpAffine(mask, inverse, size, flags=cv2.INTER_LINEAR, borderValue=0.0).clip(0, 1)[
        ..., None
    ]
    face = cv2.warpAffine(crop, inverse, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.rint(weight * face + (1 - weight) * frame).astype(np.uint8)


def paste_areas(matrices: list[np.ndarray], size: int, shape: tuple[int, ...]) -> np.ndarray:
    """Where crops of `size` made with `matrices` land in a frame of `shape`: the warped squares."""
    inside = np.zeros(shape[:2], np.float32)
    for matrix in matrices:
        square = np.ones((size, size), np.float32)
        warped = cv2.warpAffine(square, cv2.invertAffineTransform(matrix), shape[1::-1], borderValue=0.0)
        inside = np.maximum(inside, warped)
    return inside > 0


def scrfd_paste_areas(frame: np.ndarray, detector: Path) -> tuple[int, np.ndarray]:
    """How many faces InsightFace's SCRFD finds in a BGR frame, and where their 128-pixel crops land."""
    scrfd = SCRFD(str(detector))
    scrfd.prepare(-1, input_size=DETECTOR_SIZE, det_thresh=0.5)
    _, landmarks = scrfd.detect(frame, input_size=DETECTOR_SIZE)
    return len(landmarks), paste_areas(
        [insightface_matrix(points, 128) for points in landmarks], 128, frame.shape
    )


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)
