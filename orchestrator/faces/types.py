"""Names for the arrays the face functions pass around, and the Face record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Frame = np.ndarray  # uint8 [H, W, 3] BGR image or video frame
Crop = np.ndarray  # uint8 [S, S, 3] BGR face crop aligned to a template
Matrix = np.ndarray  # float [2, 3] affine transform, frame -> crop
Mask = np.ndarray  # float32 [H, W] in 0..1
Landmarks = np.ndarray  # float32 [5, 2]: left eye, right eye, nose tip, left and right mouth corners
Embedding = np.ndarray  # float32 [D], unit length


@dataclass
class Face:
    """A detected face in frame pixels."""

    box: np.ndarray  # float32 [4]: x1, y1, x2, y2
    score: float
    landmarks: Landmarks
    embedding: Embedding | None = None
    raw_embedding: np.ndarray | None = None  # float32 [D]: the recognizer's output before normalisation

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))
