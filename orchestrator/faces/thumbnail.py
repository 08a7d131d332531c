"""A small picture of a face, for people choosing among the faces found."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from orchestrator.faces.types import Face, Frame

THUMBNAIL_SIDE = 96  # pixels, the longest side
THUMBNAIL_MARGIN = 0.2  # of the face box's size, on each side


def thumbnail(frame: Frame, face: Face) -> str:
    """The face's box with a margin, at most THUMBNAIL_SIDE pixels a side, as a JPEG data URL."""
    x1, y1, x2, y2 = face.box
    margin = THUMBNAIL_MARGIN * max(x2 - x1, y2 - y1)
    height, width = frame.shape[:2]
    left, top = int(max(x1 - margin, 0)), int(max(y1 - margin, 0))
    right, bottom = int(min(x2 + margin, width)), int(min(y2 + margin, height))
    crop = frame[top : max(bottom, top + 1), left : max(right, left + 1)]
    scale = min(THUMBNAIL_SIDE / max(crop.shape[:2]), 1.0)
    crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else crop
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(crop), [cv2.IMWRITE_JPEG_QUALITY, 85])[1]
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
