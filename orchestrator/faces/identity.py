"""Identity: several source faces averaged into one, and how far apart two identities are."""

from __future__ import annotations

import numpy as np

from orchestrator.faces.types import Embedding


def average_identity(embeddings: np.ndarray) -> Embedding:
    """The unit-length mean of unit embeddings [N, D]: one identity from several source photos."""
    mean = np.asarray(embeddings, np.float64).mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def face_distance(a: Embedding, b: Embedding) -> float:
    """Cosine distance of unit embeddings: 0 for the same face, about 1 for unrelated faces."""
    return float(1.0 - np.dot(a, b))
