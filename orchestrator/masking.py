"""The mask of every face a paste-back step puts back: the box mask combined with the asked ones.

One Triton call per mask model for all the crops of a step (`face_occlusion`, `face_parse`, and
`face_landmark` for the area and mouth masks). The mask models are optional in a repository; asking
for a mask whose model is not served is refused with one line naming the model.
"""

from __future__ import annotations

import cv2
import numpy as np

from modelplane import contract
from orchestrator.errors import MissingModel
from orchestrator.faces.blend import box_mask
from orchestrator.faces.masks import area_mask, combine, mouth_mask, occlusion_mask, region_mask
from orchestrator.faces.types import Face, Frame, Mask, Matrix
from orchestrator.options import SwapOptions
from orchestrator.triton import TritonClient

NEEDS = {  # mask -> (ensemble, role)
    "occlusion": (contract.OCCLUSION, "occluder"),
    "region": (contract.PARSE, "parser"),
    "area": (contract.LANDMARK, "landmarker"),
    "mouth": (contract.LANDMARK, "landmarker"),
}
LANDMARK_FILL = (
    195 / 256
)  # the share of the landmarker's crop the face box's longer side fills (FaceFusion's)


def landmark_matrix(box: np.ndarray, side: int) -> Matrix:
    """Frame -> landmarker crop: the box scaled so its longer side fills LANDMARK_FILL, centred."""
    x1, y1, x2, y2 = (float(v) for v in box)
    scale = LANDMARK_FILL * side / max(x2 - x1, y2 - y1, 1.0)
    return np.array(
        [[scale, 0, (side - (x1 + x2) * scale) / 2], [0, scale, (side - (y1 + y2) * scale) / 2]], np.float64
    )


def mask_kinds(options: SwapOptions) -> tuple[str, ...]:
    """The masks the options ask for beyond none: `mask`'s, and the mouth mask."""
    return options.masks + (("mouth",) if options.mouth_mask else ())


def check_mask_models(triton: TritonClient, kinds: tuple[str, ...]) -> None:
    """MissingModel naming the first asked mask whose model this Triton does not serve."""
    needed = {kind: NEEDS[kind] for kind in kinds if kind in NEEDS}
    ready = triton.ready_models({model for model, _ in needed.values()})
    for kind, (model, role) in needed.items():
        if not ready[model]:
            raise MissingModel(
                f"the {kind} mask needs the {role} model ({model}), which this Triton does not serve"
            )


def _apply(matrix: Matrix, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


class FaceMasker:
    """Masks for the crops of one paste-back step, from the options' `mask`, regions, areas and mouth mask
    (their models checked when the request's plan was resolved)."""

    def __init__(self, triton: TritonClient, options: SwapOptions):
        self.triton = triton
        self.options = options
        self.kinds = mask_kinds(options)
        self._boxes: dict[int, Mask] = {}

    def box(self, size: int) -> Mask:
        if size not in self._boxes:
            self._boxes[size] = box_mask(size, self.options.mask_blur, self.options.padding)
        return self._boxes[size]

    def masks(
        self, frames: list[Frame], faces: list[Face], crops: np.ndarray, matrices: list[Matrix]
    ) -> list[Mask]:
        """One combined mask per crop; `crops` [N,S,S,3] were cut from `frames` with `matrices`."""
        size = crops.shape[1]
        parts = [[self.box(size)] for _ in crops]
        if "occlusion" in self.kinds:
            for part, visible in zip(parts, self._run(contract.OCCLUSION, crops)[contract.MASK], strict=True):
                part.append(occlusion_mask(visible, size))
        if "region" in self.kinds:
            regions = tuple(self.options.regions.split(","))
            for part, classes in zip(parts, self._run(contract.PARSE, crops)[contract.CLASSES], strict=True):
                part.append(region_mask(classes, regions, size))
        if "area" in self.kinds or "mouth" in self.kinds:
            areas = tuple(self.options.areas.split(","))
            grow, feather = self.options.mouth_mask_size / 100, self.options.mouth_mask_feather / 100
            for part, points in zip(parts, self.landmarks(frames, faces, matrices), strict=True):
                if "area" in self.kinds:
                    part.append(area_mask(points, areas, size))
                if "mouth" in self.kinds:
                    part.append(mouth_mask(points, size, grow, feather))
        return [combine(part) for part in parts]

    def _run(self, model: str, crops: np.ndarray) -> dict[str, np.ndarray]:
        side = self.triton.crop_size(model)
        if crops.shape[1] != side:  # area averaging to shrink, bilinear to enlarge
            how = cv2.INTER_AREA if crops.shape[1] > side else cv2.INTER_LINEAR
            crops = np.stack([cv2.resize(c, (side, side), interpolation=how) for c in crops])
        return self.triton.infer(model, {contract.CROP: crops})

    def landmarks(self, frames: list[Frame], faces: list[Face], matrices: list[Matrix]) -> list[np.ndarray]:
        """The 68 landmarks of each face, float [68, 2] in step-crop pixels (`matrices`: frame -> crop)."""
        side = self.triton.crop_size(contract.LANDMARK)
        cuts = [landmark_matrix(face.box, side) for face in faces]
        crops = np.stack([cv2.warpAffine(f, m, (side, side)) for f, m in zip(frames, cuts, strict=True)])
        found = self.triton.infer(contract.LANDMARK, {contract.CROP: crops})[contract.LANDMARKS]
        return [
            _apply(matrix, _apply(cv2.invertAffineTransform(cut), points))
            for points, cut, matrix in zip(found, cuts, matrices, strict=True)
        ]
