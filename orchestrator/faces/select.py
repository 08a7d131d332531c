"""Face selection: which of the detected faces get swapped.

- `many`: every face.
- `one`: a single face, the first in `order` (largest by default, or by position), or the one at
  `index` in that order.
- `reference`: every face whose identity is within `distance` (cosine distance of unit
  embeddings) of a reference face, so a video keeps swapping the same person.
"""

from __future__ import annotations

from orchestrator.choices import FACE_ORDERS, SELECTORS
from orchestrator.faces.identity import face_distance
from orchestrator.faces.types import Embedding, Face

DEFAULT_REFERENCE_DISTANCE = 0.6


def order_faces(faces: list[Face], order: str = "largest") -> list[Face]:
    keys = {
        "largest": lambda f: -f.area,
        "smallest": lambda f: f.area,
        "left-right": lambda f: f.box[0],
        "right-left": lambda f: -f.box[2],
        "top-bottom": lambda f: f.box[1],
        "bottom-top": lambda f: -f.box[3],
    }
    if order not in keys:
        raise ValueError(f"unknown face order {order!r}; choose one of {', '.join(FACE_ORDERS)}")
    return sorted(faces, key=keys[order])


def select_faces(
    faces: list[Face],
    selector: str = "many",
    *,
    order: str = "largest",
    index: int = 0,
    reference: Embedding | None = None,
    distance: float = DEFAULT_REFERENCE_DISTANCE,
) -> list[Face]:
    """The faces to swap; `reference` selection needs every face's embedding."""
    if selector == "many":
        return list(faces)
    if selector == "one":
        ordered = order_faces(faces, order)
        return ordered[index : index + 1]
    if selector == "reference":
        if reference is None:
            raise ValueError("the reference selector needs a reference face")
        return [
            f for f in faces if f.embedding is not None and face_distance(f.embedding, reference) < distance
        ]
    raise ValueError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")
