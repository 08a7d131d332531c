"""What the benchmarks measure on: the real SCRFD with the contract twins, their repository, and
InsightFace's own classes on the same files."""

from __future__ import annotations

from pathlib import Path

import cv2
from insightface.app.common import Face as ReferenceFace

from modelplane.prepare import prepare_repository
from modelplane.twins import write_twins
from tests.helpers.paths import SCRFD, TWO_FACES
from tests.helpers.reference import InsightFaceReference

SHARED_DETECTOR = SCRFD
SOURCE_PHOTO = TWO_FACES


def twin_setup(scratch: Path, detector: Path) -> tuple[Path, InsightFaceReference, ReferenceFace]:
    """The twins with `detector`, their prepared repository, the reference on the same files, and the
    reference's source face (the largest in SOURCE_PHOTO)."""
    files = write_twins(scratch / "models", detector)
    prepare_repository(files, scratch / "repository", twins=True)
    reference = InsightFaceReference(files)
    return scratch / "repository", reference, reference.largest_face(cv2.imread(str(SOURCE_PHOTO)))
