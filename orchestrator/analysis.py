"""Faces found and recognised: detection (upright, at other angles, in tight portraits), identity
embeddings, the source identity of a request and the face a reference selects.

One Triton call per step for a whole batch of frames, so the server sees batches.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from modelplane import contract
from orchestrator.errors import InputError
from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.detect import faces_of, letterbox
from orchestrator.faces.identity import average_identity, mean_embedding
from orchestrator.faces.rotate import find_at_angles, parse_angles
from orchestrator.faces.select import order_faces, select_faces
from orchestrator.faces.types import Embedding, Face, Frame
from orchestrator.images import DEFAULT_MAX_PIXELS, Photo, PhotoBytes, Picture, read_image
from orchestrator.options import SwapOptions
from orchestrator.triton import TritonClient

PORTRAIT_SIDE = 1280  # the longest side of a faceless photo tried again inside a border (twice SCRFD's)


@dataclass
class Identity:
    """The source identity: its unit embedding, its raw one (the mean of its faces') and the swapper's
    source input made from that (`source`: the latent, or for families whose source is an image the
    aligned source crop)."""

    embedding: Embedding
    raw_embedding: np.ndarray
    source: np.ndarray


class StageTimes:
    """Seconds spent per stage, summed over the threads that ran it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] += time.perf_counter() - start


SourcePhoto = Photo | Frame  # a source or reference given as a file or bytes, or already decoded


class FaceAnalyser:
    """Detection and recognition for one request's options; safe to share between threads."""

    def __init__(
        self, triton: TritonClient, options: SwapOptions = SwapOptions(), max_pixels: int = DEFAULT_MAX_PIXELS
    ):
        self.triton = triton
        self.options = options
        self.max_pixels = max_pixels  # the largest image read as a source, reference or target
        self.times = StageTimes()

    def read(self, path: Photo) -> Picture:
        return read_image(path, self.max_pixels)

    def _decoded(self, photo: SourcePhoto) -> tuple[str, Frame]:
        """A photo's name (for messages) and pixels."""
        if isinstance(photo, np.ndarray):
            return "a source photo", photo
        photo = photo if isinstance(photo, PhotoBytes) else Path(photo)
        return photo.name, self.read(photo).frame

    def find_faces(self, frames: list[Frame]) -> list[list[Face]]:
        """Faces of each frame, best score first, at each of `detector_angles`; one detector call."""
        angles = parse_angles(self.options.detector_angles)
        if angles == (0,):
            return self._find_upright(frames)
        return find_at_angles(self._find_upright, frames, angles)

    def _find_upright(self, frames: list[Frame]) -> list[list[Face]]:
        if not frames:
            return []
        detector = self.triton.detector_input
        with self.times.measure("detect"):
            canvases = np.zeros((len(frames), *detector.canvas([f.shape for f in frames]), 3), np.uint8)
            scales = [letterbox(f, canvas, detector.size) for f, canvas in zip(frames, canvases, strict=True)]
            found = self.triton.detect(canvases, self.options.score_threshold)
            return [faces_of(found, i, scale) for i, scale in enumerate(scales)]

    def embed_faces(self, frames: list[Frame], faces: list[list[Face]]) -> None:
        """Give every face its identity embeddings (unit and raw), with one batched call for all frames."""
        size = self.triton.crop_size(contract.EMBED)
        with self.times.measure("embed"):
            pairs = [(face, frame) for frame, found in zip(frames, faces, strict=True) for face in found]
            crops = [warp_face(frame, face.landmarks, template_for(size), size)[0] for face, frame in pairs]
            if crops:
                units, raws = self.triton.embed(np.stack(crops))
                for (face, _), unit, raw in zip(pairs, units, raws, strict=True):
                    face.embedding, face.raw_embedding = unit, raw

    def find_portrait_faces(self, frames: list[Frame]) -> tuple[list[Frame], list[list[Face]]]:
        """Faces of photos that may be tight face crops, which SCRFD misses when a face fills the frame.

        A photo without faces is tried again inside a black border half its size wide, made smaller
        first when it is large (a face filling it is large too); that photo is returned with the faces
        found in it.
        """
        found = self.find_faces(frames)
        frames = list(frames)
        for i, (frame, faces) in enumerate(zip(frames, found, strict=True)):
            if not faces:
                scale = PORTRAIT_SIDE / max(frame.shape[:2])
                if scale < 1:
                    frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                border = max(frame.shape[:2]) // 2
                padded = cv2.copyMakeBorder(frame, border, border, border, border, cv2.BORDER_CONSTANT)
                faces = self.find_faces([padded])[0]
                if faces:
                    frames[i], found[i] = padded, faces
        return frames, found

    def source_faces(self, sources: Sequence[SourcePhoto]) -> Iterator[tuple[Frame, Face]]:
        """The largest face of each source photo, embedded, with its photo; InputError naming a faceless
        one. Photos are decoded one at a time, so memory holds one however many there are."""
        for photo in sources:
            name, frame = self._decoded(photo)
            (frame,), (faces,) = self.find_portrait_faces([frame])
            if not faces:
                raise InputError(f"{name}: no face found in this source image")
            largest = [order_faces(faces)[0]]
            self.embed_faces([frame], [largest])
            yield frame, largest[0]

    def listed_faces(self, frame: Frame) -> list[Face]:
        """The faces of one frame, left to right, with their identity embeddings."""
        faces = order_faces(self.find_faces([frame])[0], "left-right")
        self.embed_faces([frame], [faces])
        return faces

    def reference(self, name: str, frame: Frame) -> Embedding:
        """The reference identity: the face `face_order`/`face_index` picks in a reference image or frame."""
        options = self.options
        (frame,), (found,) = self.find_portrait_faces([frame])
        faces = select_faces(found, "one", order=options.face_order, index=options.face_index)
        if not faces:
            raise InputError(f"{name}: no face found to use as the reference")
        self.embed_faces([frame], [faces])
        return faces[0].embedding


def averaged(faces: list[Face]) -> tuple[Embedding, np.ndarray]:
    """One identity's unit embedding and raw mean from the faces of its source photos."""
    embeddings = np.stack([face.embedding for face in faces])
    return average_identity(embeddings), mean_embedding(np.stack([face.raw_embedding for face in faces]))
