"""The face swap built from the face functions and Triton calls: identity, selection, swap, paste-back.

`FaceSwapper` holds what every frame needs (the Triton client, the options, the source identity's
latent) and does the per-frame work; `swap_image` is the whole image job. Each Triton call carries
all the faces of a frame at once, so the server sees batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.blend import DEFAULT_MASK_BLUR, box_mask, paste_back, paste_back_insightface
from orchestrator.faces.detect import DEFAULT_SCORE_THRESHOLD, faces_from_outputs, letterbox
from orchestrator.faces.identity import average_identity
from orchestrator.faces.select import DEFAULT_REFERENCE_DISTANCE, order_faces, select_faces
from orchestrator.faces.types import Embedding, Face, Frame
from orchestrator.images import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_PIXELS,
    Picture,
    output_extension,
    read_image,
    write_image,
)
from orchestrator.triton import TritonClient

MASKS = ("box", "insightface")
ENHANCE_TEMPLATE = "ffhq_512"


class SwapError(ValueError):
    """The job cannot be done with these inputs; the message is one line for the user."""


@dataclass(frozen=True)
class SwapOptions:
    selector: str = "many"
    order: str = "largest"
    index: int = 0
    reference_distance: float = DEFAULT_REFERENCE_DISTANCE
    mask: str = "box"
    mask_blur: float = DEFAULT_MASK_BLUR
    enhance: bool = False
    enhance_blend: int = 80  # percent of the enhanced face in the result
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        if self.mask not in MASKS:
            raise SwapError(f"unknown mask {self.mask!r}; choose one of {', '.join(MASKS)}")
        if not 0 <= self.enhance_blend <= 100:
            raise SwapError(f"enhance blend must be within 0..100, got {self.enhance_blend}")
        if not 0 < self.score_threshold < 1:
            raise SwapError(f"the face score threshold must be within 0..1, got {self.score_threshold}")


@dataclass
class Identity:
    """The source identity: its unit embedding and the swapper latent made from it."""

    embedding: Embedding
    latent: np.ndarray


@dataclass
class SwapReport:
    faces: int = 0
    swapped: int = 0
    warnings: list[str] = field(default_factory=list)


class FaceSwapper:
    def __init__(self, triton: TritonClient, options: SwapOptions = SwapOptions()):
        self.triton = triton
        self.options = options
        self._masks: dict[int, np.ndarray] = {}

    def _mask(self, size: int) -> np.ndarray:
        if size not in self._masks:
            self._masks[size] = box_mask(size, self.options.mask_blur)
        return self._masks[size]

    def find_faces(self, frames: list[Frame]) -> list[list[Face]]:
        """Faces of each frame, best score first; one batched detector call for all frames."""
        if not frames:
            return []
        size = self.triton.detector_size
        boxed = [letterbox(frame, size) for frame in frames]
        outputs = self.triton.detect(np.stack([canvas for canvas, _ in boxed]))
        return [
            faces_from_outputs(
                {k: v[i] for k, v in outputs.items()}, size, scale, self.options.score_threshold
            )
            for i, (_, scale) in enumerate(boxed)
        ]

    def embed_faces(self, frame: Frame, faces: list[Face]) -> None:
        """Give each face its identity embedding (one batched call)."""
        size = self.triton.crop_size("face_embed")
        crops = [warp_face(frame, face.landmarks, template_for(size), size)[0] for face in faces]
        if crops:
            for face, embedding in zip(faces, self.triton.embed(np.stack(crops)), strict=True):
                face.embedding = embedding

    def identity(self, sources: list[tuple[str, Frame]]) -> Identity:
        """One identity from the largest face of each source image; SwapError naming a faceless one."""
        found = self.find_faces([frame for _, frame in sources])
        embeddings = []
        for (name, frame), faces in zip(sources, found, strict=True):
            if not faces:
                raise SwapError(f"{name}: no face found in this source image")
            largest = order_faces(faces)[0]
            self.embed_faces(frame, [largest])
            embeddings.append(largest.embedding)
        embedding = average_identity(np.stack(embeddings))
        return Identity(embedding, self.triton.latent(embedding))

    def reference(self, name: str, frame: Frame) -> Embedding:
        """The reference identity: the face `order`/`index` picks in a reference image or frame."""
        faces = select_faces(
            self.find_faces([frame])[0], "one", order=self.options.order, index=self.options.index
        )
        if not faces:
            raise SwapError(f"{name}: no face found to use as the reference")
        self.embed_faces(frame, faces)
        return faces[0].embedding

    def select(self, frame: Frame, faces: list[Face], reference: Embedding | None) -> list[Face]:
        options = self.options
        if options.selector == "reference":
            self.embed_faces(frame, faces)
        return select_faces(
            faces,
            options.selector,
            order=options.order,
            index=options.index,
            reference=reference,
            distance=options.reference_distance,
        )

    def swap_faces(self, frame: Frame, faces: list[Face], identity: Identity) -> Frame:
        """A copy of `frame` with `faces` swapped to `identity` (and enhanced if asked)."""
        result = frame.copy()
        if not faces:
            return result
        size = self.triton.crop_size("face_swap")
        warped = [warp_face(frame, face.landmarks, template_for(size), size) for face in faces]
        swapped = self.triton.swap(np.stack([crop for crop, _ in warped]), identity.latent)
        for crop, (_, matrix) in zip(swapped, warped, strict=True):
            if self.options.mask == "insightface":
                paste_back_insightface(result, crop, matrix)
            else:
                paste_back(result, crop, self._mask(size), matrix)
        if self.options.enhance:
            self.enhance_faces(result, faces)
        return result

    def enhance_faces(self, frame: Frame, faces: list[Face]) -> None:
        """Enhance faces in place: FFHQ-aligned crops through face_enhance, blended by `enhance_blend`."""
        size = self.triton.crop_size("face_enhance")
        warped = [warp_face(frame, face.landmarks, ENHANCE_TEMPLATE, size) for face in faces]
        enhanced = self.triton.enhance(np.stack([crop for crop, _ in warped]))
        mask = self._mask(size) * (self.options.enhance_blend / 100)
        for crop, (_, matrix) in zip(enhanced, warped, strict=True):
            paste_back(frame, crop, mask, matrix)


def swap_image(
    swapper: FaceSwapper, sources: list[Path], target: Path, output: Path, reference: Path | None = None
) -> SwapReport:
    """Swap the source identity onto the selected faces of a target image; write `output` atomically.

    A target without faces is written unchanged, with a warning in the report.
    """
    options = swapper.options
    output_extension(output)  # refuse an unwritable format before any work
    if options.selector == "reference" and reference is None:
        raise SwapError("the reference selector needs a reference image (--reference)")
    pictures = [(Path(p).name, read_image(p, options.max_pixels).frame) for p in sources]
    picture = read_image(target, options.max_pixels)
    reference_embedding = None
    if reference is not None and options.selector == "reference":
        reference_embedding = swapper.reference(
            Path(reference).name, read_image(reference, options.max_pixels).frame
        )
    identity = swapper.identity(pictures)
    faces = swapper.find_faces([picture.frame])[0]
    report = SwapReport(faces=len(faces))
    if not faces:
        report.warnings.append(f"{Path(target).name}: no face found; the target is written unchanged")
    selected = swapper.select(picture.frame, faces, reference_embedding)
    if faces and not selected:
        report.warnings.append(
            f"{Path(target).name}: no face matched the selection; the target is written unchanged"
        )
    report.swapped = len(selected)
    result = swapper.swap_faces(picture.frame, selected, identity)
    write_image(output, Picture(result, picture.alpha), options.jpeg_quality)
    return report
