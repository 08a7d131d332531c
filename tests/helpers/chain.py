"""The chain's own steps, reached as the pipeline reaches them."""

from __future__ import annotations

import numpy as np

from orchestrator.analysis import Identity
from orchestrator.faces.types import Face, Frame
from orchestrator.processors import FaceSwap, FrameWork
from orchestrator.swapper import FaceSwapper


def face_sources(
    swapper: FaceSwapper, frames: list[Frame], faces: list[list[Face]], identity: Identity
) -> np.ndarray:
    """The source input each face is swapped to (latents, or source crops), as the swap processor forms it."""
    swap = next(p for p in swapper.chain.processors if isinstance(p, FaceSwap))
    return swap.sources(FrameWork(frames, frames, faces, [[identity] * len(found) for found in faces]))
