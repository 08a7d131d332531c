"""One request's face work: detection and recognition (`FaceAnalyser`), its plan, the source identity
the plan's swapper takes, and the chain of processors the plan orders."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from orchestrator.analysis import FaceAnalyser, Identity, SourcePhoto, averaged
from orchestrator.faces.align import warp_face
from orchestrator.faces.types import Face, Frame
from orchestrator.images import DEFAULT_MAX_PIXELS
from orchestrator.options import SwapOptions
from orchestrator.plan import Plan, resolve_plan
from orchestrator.processors import Chain
from orchestrator.triton import TritonClient


class FaceSwapper(FaceAnalyser):
    """The analyser of a request's options, with its plan (resolved on first use when not given) and
    its chain of processors."""

    def __init__(
        self,
        triton: TritonClient,
        options: SwapOptions = SwapOptions(),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        plan: Plan | None = None,
    ):
        super().__init__(triton, plan.options if plan is not None else options, max_pixels)
        if plan is not None:
            self.plan = plan

    @cached_property
    def plan(self) -> Plan:
        return resolve_plan(self.triton, self.options)

    @property
    def boost(self) -> int:
        """The pixel boost's k: faces are aligned at k times the swapper's crop size."""
        return self.plan.boost

    @cached_property
    def chain(self) -> Chain:
        return Chain(self, self.plan)

    def identity(self, sources: Sequence[SourcePhoto]) -> Identity:
        """One identity from the largest face of each source photo (files or decoded frames);
        InputError naming a faceless one, or what the plan refuses, before any work."""
        swapper = self.plan.swapper
        faces, crop = [], None
        for frame, face in self.source_faces(sources):
            faces.append(face)
            if swapper.source == "image" and crop is None:  # the first source's face, aligned
                crop = warp_face(frame, face.landmarks, swapper.source_template, swapper.source_size)[0]
        embedding, raw = averaged(faces)
        if crop is not None:
            return Identity(embedding, raw, crop)
        return Identity(embedding, raw, self.triton.latent(raw, swapper.latent_model))

    def swap_frames(self, frames: list[Frame], faces: list[list[Face]], identity: Identity) -> list[Frame]:
        """Copies of `frames` with their `faces` all processed toward one identity."""
        return self.chain.run(frames, faces, [[identity] * len(found) for found in faces])
