"""The chain of processors every path runs on a batch of frames, and the processors themselves.

A processor is one small object with one interface: called with the batch's `FrameWork`, it writes
into the results. Per-face processors cut every face of the batch, make one Triton call on all the
crops (so Triton batches them across faces and frames), and blend the results back; a processor of
whole frames reads and writes `results` as it likes. The chain runs them in the plan's order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from orchestrator.analysis import FaceAnalyser, Identity
from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.blend import paste_back, paste_back_insightface
from orchestrator.faces.boost import swap_boosted
from orchestrator.faces.identity import NEUTRAL_SWAP_WEIGHT, balanced_latents
from orchestrator.faces.types import Crop, Face, Frame, Mask, Matrix
from orchestrator.masking import FaceMasker
from orchestrator.plan import Plan

ENHANCE_TEMPLATE = "ffhq_512"  # enhancers of repositories prepared before families


@dataclass
class FrameWork:
    """A batch of frames in the chain: the frames as decoded, the results the processors write, and
    the faces of each frame that are processed with the identity each one gets."""

    frames: list[Frame]
    results: list[Frame]
    faces: list[list[Face]]
    identities: list[list[Identity]]  # parallel to `faces`


class Processor(Protocol):
    name: str

    def __call__(self, work: FrameWork) -> None: ...


class FaceProcessor(ABC):
    """Aligned face crops through one Triton call, blended back into the results under the faces' masks.

    Subclasses give the crop's `template` and `size`, `infer` and `place`; `from_results` says whether
    crops are cut from the results so far (after the processors before) or from the decoded frames.
    """

    name = "face"
    from_results = True

    def __init__(self, analyser: FaceAnalyser, plan: Plan, masker: FaceMasker):
        self.analyser, self.plan, self.masker = analyser, plan, masker
        self.triton, self.times = analyser.triton, analyser.times

    template: str
    size: int

    @abstractmethod
    def infer(self, crops: np.ndarray, work: FrameWork) -> np.ndarray:
        """The processed crops [N,S,S,3] of the batch's faces, in frame and face order."""

    def place(self, frame: Frame, crop: Crop, matrix: Matrix, mask: Mask) -> None:
        paste_back(frame, crop, mask, matrix)

    def __call__(self, work: FrameWork) -> None:
        sources = work.results if self.from_results else work.frames
        with self.times.measure("align"):
            jobs = [
                (source, result, face, *warp_face(source, face.landmarks, self.template, self.size))
                for source, result, found in zip(sources, work.results, work.faces, strict=True)
                for face in found
            ]
        if not jobs:
            return
        sources, results, faces, crops, matrices = (list(column) for column in zip(*jobs, strict=True))
        crops = np.stack(crops)
        with self.times.measure(self.name):
            processed = self.infer(crops, work)
        with self.times.measure("mask"):
            masks = self.masker.masks(sources, faces, crops, matrices)
        with self.times.measure("paste"):
            for result, crop, matrix, mask in zip(results, processed, matrices, masks, strict=True):
                self.place(result, crop, matrix, mask)


class FaceSwap(FaceProcessor):
    """Each face swapped to its identity, by the plan's swapper, at the plan's pixel boost."""

    name = "swap"
    from_results = False

    def __init__(self, analyser: FaceAnalyser, plan: Plan, masker: FaceMasker):
        super().__init__(analyser, plan, masker)
        size = self.triton.crop_size(plan.swapper.ensemble)
        self.template = plan.swapper.template or template_for(size)
        self.size = size * plan.boost

    def sources(self, work: FrameWork) -> np.ndarray:
        """The source input each face is swapped to, in frame and face order: its identity's, and away
        from the neutral `swap_weight` mixed with the face's own embedding (the family's
        `weight_target`), after one batched call for the embeddings still missing."""
        sources = np.stack([identity.source for found in work.identities for identity in found])
        weight = self.plan.options.swap_weight
        if weight == NEUTRAL_SWAP_WEIGHT:
            return sources
        target = self.plan.swapper.weight_target  # a Face field (checked by the plan)
        missing = [[face for face in found if getattr(face, target) is None] for found in work.faces]
        self.analyser.embed_faces(work.frames, missing)
        targets = np.stack([getattr(face, target) for found in work.faces for face in found])
        return balanced_latents(sources, targets, weight)

    def infer(self, crops: np.ndarray, work: FrameWork) -> np.ndarray:
        ensemble = self.plan.swapper.ensemble

        def swap(parts: np.ndarray, sources: np.ndarray) -> np.ndarray:
            return self.triton.swap(parts, sources, model=ensemble)

        return swap_boosted(swap, crops, self.sources(work), self.plan.boost)

    def place(self, frame: Frame, crop: Crop, matrix: Matrix, mask: Mask) -> None:
        if self.plan.options.mask == "insightface":
            paste_back_insightface(frame, crop, matrix)
        else:
            paste_back(frame, crop, mask, matrix)


class FaceEnhance(FaceProcessor):
    """Each face restored by the plan's enhancer, blended in at `enhance_blend` percent."""

    name = "enhance"

    def __init__(self, analyser: FaceAnalyser, plan: Plan, masker: FaceMasker):
        super().__init__(analyser, plan, masker)
        self.size = self.triton.crop_size(plan.enhancer.ensemble)
        self.template = plan.enhancer.template or ENHANCE_TEMPLATE
        self.share = plan.options.enhance_blend / 100

    def infer(self, crops: np.ndarray, work: FrameWork) -> np.ndarray:
        return self.triton.enhance(crops, self.plan.options.enhance_weight, self.plan.enhancer.ensemble)

    def place(self, frame: Frame, crop: Crop, matrix: Matrix, mask: Mask) -> None:
        paste_back(frame, crop, mask * self.share, matrix)


PROCESSORS: dict[str, type[FaceProcessor]] = {"face_swapper": FaceSwap, "face_enhancer": FaceEnhance}


class Chain:
    """The plan's processors in order, run on batches of frames."""

    def __init__(self, analyser: FaceAnalyser, plan: Plan):
        masker = FaceMasker(analyser.triton, plan.options)
        self.processors: list[Processor] = [
            PROCESSORS[name](analyser, plan, masker) for name in plan.processors
        ]

    def run(
        self, frames: list[Frame], faces: list[list[Face]], identities: list[list[Identity]]
    ) -> list[Frame]:
        """Copies of `frames` with each of `faces` processed toward its identity."""
        work = FrameWork(frames, [frame.copy() for frame in frames], faces, identities)
        for processor in self.processors:
            processor(work)
        return work.results
