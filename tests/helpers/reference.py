"""The reference implementation: InsightFace's own classes on the same ONNX files the repository serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from insightface.app.common import Face as ReferenceFace
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD

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


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    return overlap / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap)
