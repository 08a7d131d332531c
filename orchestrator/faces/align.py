"""Alignment: five-point templates, the similarity transform onto them, and the warp.

Templates are normalised to a unit crop and scaled by the crop size at use. `arcface_112` and
`arcface_128` are InsightFace's (the 128 one is the 112 template shifted 8 px right, as InSwapper
expects); `ffhq_512` is the FFHQ alignment GFPGAN was trained on, as FaceFusion publishes it.
The model families' names (modelplane.families) follow FaceFusion's: `arcface_112_v2` is
InsightFace's 112 template, `arcface_112_v1` the older one GHOST and SimSwap were trained on,
`mtcnn_512` HifiFace's.
"""

from __future__ import annotations

import cv2
import numpy as np

from orchestrator.faces.types import Crop, Frame, Landmarks, Matrix

_ARCFACE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)
TEMPLATES = {
    "arcface_112": _ARCFACE / 112,
    "arcface_128": (_ARCFACE + np.array([8.0, 0.0], np.float32)) / 128,
    "ffhq_512": np.array(
        [
            [0.37691676, 0.46864664],
            [0.62285697, 0.46912813],
            [0.50123859, 0.61331904],
            [0.39308822, 0.72541100],
            [0.61150205, 0.72490465],
        ],
        np.float32,
    ),
}
TEMPLATES["arcface_112_v2"] = TEMPLATES["arcface_112"]
TEMPLATES["arcface_112_v1"] = np.array(
    [
        [0.35473214, 0.45658929],
        [0.64526786, 0.45658929],
        [0.5, 0.61154464],
        [0.37913393, 0.776875],
        [0.62086607, 0.776875],
    ],
    np.float32,
)
TEMPLATES["mtcnn_512"] = np.array(
    [
        [0.36562865, 0.46733799],
        [0.63305391, 0.46585885],
        [0.50019127, 0.61942959],
        [0.39032951, 0.77598822],
        [0.61178945, 0.77476328],
    ],
    np.float32,
)


def estimate_matrix(landmarks: Landmarks, template: str, size: int) -> Matrix:
    """The least-squares similarity transform taking the landmarks onto the template at `size`."""
    target = TEMPLATES[template] * size
    # RANSAC with a threshold no landmark can miss keeps all five points: a plain least-squares fit.
    matrix, _ = cv2.estimateAffinePartial2D(
        np.asarray(landmarks, np.float32), target, method=cv2.RANSAC, ransacReprojThreshold=1000
    )
    return matrix


def warp_face(frame: Frame, landmarks: Landmarks, template: str, size: int) -> tuple[Crop, Matrix]:
    """The aligned square crop of a face and the matrix that made it (frame -> crop)."""
    matrix = estimate_matrix(landmarks, template, size)
    crop = cv2.warpAffine(
        frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, matrix


def template_for(size: int) -> str:
    """InsightFace's rule: crops of a multiple of 112 use the 112 template, of 128 the 128 one."""
    return "arcface_112" if size % 112 == 0 else "arcface_128"
