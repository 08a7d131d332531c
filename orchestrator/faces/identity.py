"""Identity: several source faces averaged into one, and how far apart two identities are."""

from __future__ import annotations

import numpy as np

from orchestrator.faces.types import Embedding


def average_identity(embeddings: np.ndarray) -> Embedding:
    """The unit-length mean of unit embeddings [N, D]: one identity from several source photos."""
    mean = np.asarray(embeddings, np.float64).mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """The mean [D] float32 of embeddings [N, D]: of raw ones, the source vector's input (FaceFusion's
    average face)."""
    return np.asarray(embeddings, np.float64).mean(axis=0).astype(np.float32)


def face_distance(a: Embedding, b: Embedding) -> float:
    """Cosine distance of unit embeddings: 0 for the same face, about 1 for unrelated faces."""
    return float(1.0 - np.dot(a, b))


# --- identity weight (`swap_weight`), FaceFusion's range and mapping

NEUTRAL_SWAP_WEIGHT = 0.5  # leaves the source identity as it is
SWAP_WEIGHT_SHIFT = 0.35  # the share of the target face mixed in at weight 0 (taken out at weight 1)


def balanced_latents(latent: np.ndarray, targets: np.ndarray, weight: float) -> np.ndarray:
    """The source latent [D] (or each face's, [N, D]) moved toward each target face's embedding [N, D]
    (weight below 0.5, up to 0.35 of the target at 0) or away from it (above 0.5, up to -0.35 at 1);
    [N, D] float32.

    FaceFusion's `face_swapper_weight` (balance_source_embedding), applied to the swapper's source
    vector; which of the target's embeddings is mixed in is the swapper family's `weight_target`.
    """
    shift = np.float32(np.interp(weight, [0, 1], [SWAP_WEIGHT_SHIFT, -SWAP_WEIGHT_SHIFT]))
    latent, targets = np.asarray(latent, np.float32), np.asarray(targets, np.float32)
    latent = latent if latent.ndim == targets.ndim else latent[None]  # one latent per face, or one for all
    return (latent * (1 - shift) + targets * shift).astype(np.float32)
