"""Face masks beyond the box, as pure functions on crop-space arrays, in the manner of FaceFusion's.

Every mask is float32 [S, S] in 0..1 over an aligned crop of side S: 1 where the processed face is
pasted, 0 where the frame keeps its own pixels. Masks combine by element-wise minimum, so the
combined mask is never larger than any of its parts. The model-made masks (occlusion, region) and
the landmark-made ones (area) are softened FaceFusion's way: a Gaussian blur, then the upper half of
its range stretched back to 0..1, so a covered pixel well inside its patch stays exactly 0.
"""

from __future__ import annotations

import cv2
import numpy as np

from orchestrator.faces.types import Mask

# BiSeNet's face-parsing classes by name (CelebAMask-HQ's order).
REGIONS = {
    "skin": 1,
    "left-eyebrow": 2,
    "right-eyebrow": 3,
    "left-eye": 4,
    "right-eye": 5,
    "glasses": 6,
    "nose": 10,
    "mouth": 11,
    "upper-lip": 12,
    "lower-lip": 13,
}
# Areas as outlines of 68-point (iBUG) landmarks.
AREAS = {
    "upper-face": (0, 1, 2, 31, 32, 33, 34, 35, 14, 15, 16, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17),
    "lower-face": (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 35, 34, 33, 32, 31, 2),
    "mouth": tuple(range(48, 60)),
}
MOUTH = AREAS["mouth"]
SOFTEN_SIGMA = 1 / 50  # of the crop side: FaceFusion's sigma of 5 pixels on a 256 crop


def soften(mask: Mask) -> Mask:
    """Blur by SOFTEN_SIGMA of the side, keep the upper half stretched to 0..1 (FaceFusion's way)."""
    sigma = max(mask.shape[0] * SOFTEN_SIGMA, 0.5)
    blurred = cv2.GaussianBlur(np.clip(mask, 0, 1).astype(np.float32), (0, 0), sigma)
    return (np.clip(blurred, 0.5, 1) - 0.5) * 2


def _to_side(mask: np.ndarray, size: int) -> np.ndarray:
    mask = mask.astype(np.float32)
    return mask if mask.shape[0] == size else cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)


def occlusion_mask(visible: np.ndarray, size: int) -> Mask:
    """From the occluder's uint8 mask (255 where the face shows): 1 on the face, 0 where covered."""
    return soften(_to_side(visible / 255.0, size))


def region_mask(classes: np.ndarray, regions: tuple[str, ...], size: int) -> Mask:
    """From the parser's class map: 1 over the named regions, 0 elsewhere."""
    chosen = np.isin(classes, [REGIONS[name] for name in regions])
    return soften(_to_side(chosen, size))


def _filled(points: np.ndarray, size: int) -> np.ndarray:
    area = np.zeros((size, size), np.float32)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(area, hull, 1.0)
    return area


def area_mask(landmarks: np.ndarray, areas: tuple[str, ...], size: int) -> Mask:
    """1 inside the outline of each named area of the 68 crop-space landmarks, 0 outside."""
    filled = np.max([_filled(landmarks[list(AREAS[name])], size) for name in areas], axis=0)
    return soften(filled)


def mouth_mask(landmarks: np.ndarray, size: int, grow: float, feather: float) -> Mask:
    """0 over the target's own mouth (its outer lips grown by `grow` of the mouth's width), rising to
    1 across `feather` of that width outside it; the mouth itself stays exactly 0."""
    lips = landmarks[list(MOUTH)]
    width = float(np.ptp(lips[:, 0])) or 1.0
    mouth = _filled(lips, size)
    reach = round(grow * width)
    if reach > 0:
        mouth = cv2.dilate(mouth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1,) * 2))
    if feather > 0:
        mouth = np.maximum(mouth, cv2.GaussianBlur(mouth, (0, 0), feather * width / 2))
    return 1 - mouth


def combine(masks: list[Mask]) -> Mask:
    """The element-wise minimum: a pixel is pasted only as much as every mask allows."""
    return np.minimum.reduce(masks) if len(masks) > 1 else masks[0]
