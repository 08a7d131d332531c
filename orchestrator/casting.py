"""One source per person: who in the target gets which identity.

A face map is a list of REFERENCE=SOURCE entries: the reference is a photo of a person (the face
`face_order`/`face_index` picks in it) or a face id from `POST /v1/faces`; entries with the same
reference give that person several source photos. Each target face goes to the nearest reference
within the reference distance; a face near none is left alone. Without a map, the cast is the one
source identity on the faces the selector picks.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.analysis import Identity
from orchestrator.errors import InputError
from orchestrator.faces.identity import face_distance
from orchestrator.faces.select import select_faces
from orchestrator.faces.types import Embedding, Face, Frame
from orchestrator.swapper import FaceSwapper

FACE_ID_PREFIX = "face-"
FACE_ID_DIM = 512  # the recognizer's embedding, the swappers' source
FACE_ID_LENGTH = len(FACE_ID_PREFIX) + -(-FACE_ID_DIM * 2 * 4 // 3)  # float16 values, unpadded base64


def face_id(embedding: Embedding) -> str:
    """An opaque id of a face usable as a reference: its identity embedding, compactly encoded."""
    data = np.asarray(embedding, np.float16).tobytes()
    return FACE_ID_PREFIX + base64.urlsafe_b64encode(data).decode().rstrip("=")


def is_face_id(text: str) -> bool:
    return text.startswith(FACE_ID_PREFIX)


def id_embedding(text: str, dim: int | None = None) -> Embedding:
    """The unit embedding a face id holds (of `dim` values, when given); InputError when it is not a
    face id of this service."""
    payload = text.removeprefix(FACE_ID_PREFIX)
    try:
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        data = b""
    size_fits = len(data) == 2 * dim if dim else len(data) > 0 and len(data) % 2 == 0
    embedding = np.frombuffer(data, np.float16).astype(np.float32) if size_fits else None
    norm = 0.0 if embedding is None else float(np.linalg.norm(embedding))
    if not is_face_id(text) or not np.isfinite(norm) or norm < 0.5:
        raise InputError(f"map: {text[:24]}...: not a face id from POST /v1/faces of this service")
    return embedding / norm


@dataclass(frozen=True)
class Person:
    """One entry of a face map: the reference (a face id or an image path) and its source photos."""

    reference: str
    sources: tuple[Path, ...]


def parse_map(entries: Iterable[str], source: Callable[[str], Path], paths: bool = True) -> list[Person]:
    """REFERENCE=SOURCE entries grouped by reference, in the order first given; `source` resolves a
    SOURCE to its file. Without `paths`, a reference must be a face id. InputError names a bad entry."""
    people: dict[str, list[Path]] = {}
    for entry in entries:
        reference, _, name = entry.partition("=")
        if not reference or not name:
            raise InputError(f"map entry {entry[:60]!r}: give REFERENCE=SOURCE")
        if not paths and not is_face_id(reference):
            raise InputError(f"map entry {entry[:60]!r}: the reference must be a face id from POST /v1/faces")
        if is_face_id(reference):
            id_embedding(reference, FACE_ID_DIM)  # refused now, not when the job runs
        people.setdefault(reference, []).append(source(name))
    return [Person(reference, tuple(sources)) for reference, sources in people.items()]


def nearest_person(references: list[Embedding], distance: float) -> Callable[[Face], int | None]:
    """The person (index of the nearest reference) a face is, if closer than `distance`; else None."""

    def assign(face: Face) -> int | None:
        if face.embedding is None:
            return None
        distances = [face_distance(face.embedding, reference) for reference in references]
        best = int(np.argmin(distances))
        return best if distances[best] < distance else None

    return assign


Chosen = tuple[list[list[Face]], list[list[Identity]]]  # the faces of each frame processed, and whose


@dataclass
class Cast:
    """The identities to put in, and the reference of each person (None: the selector chooses faces).

    `mapped`: one identity per reference (a face map); else one identity, on the selected faces.
    """

    identities: list[Identity]
    references: list[Embedding] | None
    mapped: bool = False

    def choose(self, swapper: FaceSwapper, frames: list[Frame], found: list[list[Face]]) -> Chosen:
        """The faces of each frame that get an identity, and the identity of each: the selector's faces
        (all the one identity), or each mapped person's faces."""
        options = swapper.options
        if self.mapped or options.selector == "reference":  # faces tracked keep their embeddings
            swapper.embed_faces(
                frames, [[face for face in faces if face.embedding is None] for faces in found]
            )
        if not self.mapped:
            reference = self.references[0] if self.references else None
            chosen = [
                select_faces(
                    faces,
                    options.selector,
                    order=options.face_order,
                    index=options.face_index,
                    reference=reference,
                    distance=options.reference_distance,
                )
                for faces in found
            ]
            return chosen, [[self.identities[0]] * len(faces) for faces in chosen]
        assign = nearest_person(self.references, options.reference_distance)
        return self.people([[(face, assign(face)) for face in faces] for faces in found])

    def people(self, pairs: list[list[tuple[Face, int | None]]]) -> Chosen:
        """Faces paired with the person each one is (None: nobody), as the chain takes them."""
        kept = [[(face, who) for face, who in frame if who is not None] for frame in pairs]
        faces = [[face for face, _ in frame] for frame in kept]
        return faces, [[self.identities[who] for _, who in frame] for frame in kept]

    def process(self, swapper: FaceSwapper, frames: list[Frame]) -> tuple[list[Frame], int, int]:
        """Detect, choose and process a batch of frames: (result frames, faces found, faces swapped)."""
        found = swapper.find_faces(frames)
        faces, identities = self.choose(swapper, frames, found)
        results = swapper.chain.run(frames, faces, identities)
        return results, sum(map(len, found)), sum(map(len, faces))


def cast_for(
    swapper: FaceSwapper, sources: list[Path], face_map: Sequence[Person], looked_for: Embedding | None
) -> Cast:
    """The map's people with their identities and references; without a map, the one source identity."""
    if not face_map:
        return Cast([swapper.identity(sources)], None if looked_for is None else [looked_for])
    identities = [swapper.identity(list(person.sources)) for person in face_map]
    dim = len(identities[0].embedding)
    references = [
        id_embedding(person.reference, dim)
        if is_face_id(person.reference)
        else swapper.reference(Path(person.reference).name, swapper.read(Path(person.reference)).frame)
        for person in face_map
    ]
    return Cast(identities, references, mapped=True)
