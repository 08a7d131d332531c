"""Masks and paste-back: put a processed crop back into its frame.

Paste-back works on the paste area only (the bounding box of the crop warped back into the frame),
never the whole frame, which keeps it fast on 4K frames and leaves every other pixel untouched.
"""

from __future__ import annotations

import cv2
import numpy as np

from orchestrator.faces.types import Crop, Frame, Mask, Matrix

DEFAULT_MASK_BLUR = 0.3  # share of half the crop size used as the feather's blur
DEFAULT_MASK_PADDING = (0, 0, 0, 0)  # top, right, bottom, left, in percent of the crop size


def box_mask(size: int, blur: float = DEFAULT_MASK_BLUR, padding=DEFAULT_MASK_PADDING) -> Mask:
    """A feathered box over the crop, in the manner of FaceFusion's box mask.

    The border (at least half the blur width, or the padding) is zero and the edge is blurred
    with a Gaussian. Unlike FaceFusion's, the result is rescaled to reach exactly zero at the
    crop's edge, so there is no step where the pasted crop ends.
    """
    blur_amount = int(size * 0.5 * blur)
    blur_area = max(blur_amount // 2, 1)
    top, right, bottom, left = (max(blur_area, int(size * p / 100)) for p in padding)
    mask = np.zeros((size, size), np.float32)
    mask[top : size - bottom, left : size - right] = 1
    if blur_amount > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur_amount * 0.25)
        edge = max(mask[0].max(), mask[-1].max(), mask[:, 0].max(), mask[:, -1].max())
        mask = np.clip((mask - edge) / (mask.max() - edge), 0, 1)
    return mask


def paste_area(matrix: Matrix, size: int, frame_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The frame box (x1, y1, x2, y2) that a crop of `size` made with `matrix` covers, clipped."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    points = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = frame_shape[:2]
    x1, y1 = np.floor(points.min(axis=0)).astype(int) - 1
    x2, y2 = np.ceil(points.max(axis=0)).astype(int) + 1
    return max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)


def _into_area(frame: Frame, matrix: Matrix, size: int):
    """The paste area and the inverse matrix mapping crop pixels into it (or None if off-frame)."""
    x1, y1, x2, y2 = paste_area(matrix, size, frame.shape)
    if x2 <= x1 or y2 <= y1:
        return None
    inverse = cv2.invertAffineTransform(matrix)
    inverse[:, 2] -= (x1, y1)
    return (x1, y1, x2, y2), inverse


def _blend(frame: Frame, area, face: np.ndarray, weight: np.ndarray) -> Frame:
    x1, y1, x2, y2 = area
    region = frame[y1:y2, x1:x2]
    weight = np.clip(weight, 0, 1)[:, :, None]
    frame[y1:y2, x1:x2] = np.rint(region + weight * (face.astype(np.float32) - region)).astype(np.uint8)
    return frame


def paste_back(frame: Frame, crop: Crop, mask: Mask, matrix: Matrix) -> Frame:
    """Blend `crop` (made from `frame` with `matrix`) back in, weighted by the crop-space `mask`.

    Works in place and returns `frame`; pixels outside the paste area are never written.
    """
    placed = _into_area(frame, matrix, crop.shape[0])
    if placed is None:
        return frame
    area, inverse = placed
    shape = (area[2] - area[0], area[3] - area[1])
    weight = cv2.warpAffine(mask, inverse, shape, flags=cv2.INTER_LINEAR, borderValue=0.0)
    face = cv2.warpAffine(crop, inverse, shape, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return _blend(frame, area, face, weight)


def paste_back_insightface(frame: Frame, crop: Crop, matrix: Matrix) -> Frame:
    """Paste-back with InsightFace's INSwapper mask, computed over the paste area only.

    The crop's white square is warped into the frame, eroded by a tenth of its size and blurred
    by a twentieth, as `INSwapper.get(paste_back=True)` does over the whole frame; the result
    agrees with it. Works in place and returns `frame`.
    """
    size = crop.shape[0]
    placed = _into_area(frame, matrix, size)
    if placed is None:
        return frame
    area, inverse = placed
    shape = (area[2] - area[0], area[3] - area[1])
    white = cv2.warpAffine(np.full((size, size), 255, np.float32), inverse, shape, borderValue=0.0)
    white[white > 20] = 255
    rows, cols = np.nonzero(white == 255)
    mask_size = int(np.sqrt((rows.max() - rows.min()) * (cols.max() - cols.min())))
    erode = max(mask_size // 10, 10)
    white = cv2.erode(white, np.ones((erode, erode), np.uint8))
    blur = 2 * max(mask_size // 20, 5) + 1
    weight = cv2.GaussianBlur(white, (blur, blur), 0) / 255
    face = cv2.warpAffine(crop, inverse, shape, borderValue=0.0)
    return _blend(frame, area, face, weight)
