"""Where the project and the shared test material are: `../shared` beside the checkout."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
SCRFD = SHARED / "models" / "scrfd_2.5g_kps.onnx"
TWO_FACES = SHARED / "images" / "two_faces.jpg"
