"""What each mask costs: per face and per 1080p frame, against the box mask alone, in one run.

The real SCRFD from ../shared/models (or the detector given) with the contract twins, the mask
roles' twins included, on a local Triton (CPU rendering). A 1080p frame holding InsightFace's t1
photo (six faces) goes through the whole per-frame work (detect, align, swap, masks, paste back)
once per mask setting, the settings interleaved so each sees the same machine load; the masks of
the six faces are also timed alone (`FaceMasker.masks`, one Triton call per mask model).

    .venv/bin/python -m scripts.bench_masks [--repeats 5] [--detector PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from insightface.data import get_image

from modelplane import contract
from modelplane.local_server import running_server
from modelplane.mask_twins import write_mask_twins
from modelplane.prepare import prepare_repository
from modelplane.twins import write_twins
from orchestrator.casting import Cast
from orchestrator.faces.align import template_for, warp_face
from orchestrator.masking import FaceMasker
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from scripts.twin_stack import SHARED_DETECTOR, SOURCE_PHOTO

SETTINGS = {
    "box": {},
    "box + occlusion": {"mask": "box,occlusion"},
    "box + region": {"mask": "box,region", "regions": "skin,nose,mouth,upper-lip,lower-lip"},
    "box + area": {"mask": "box,area", "areas": "lower-face"},
    "box + mouth mask": {"mouth_mask": True},
    "all four": {"mask": "box,occlusion,region,area", "mouth_mask": True},
}
TITLE = "Masks: cost per face and per 1080p frame"


@dataclass
class Row:
    setting: str
    frame: float  # seconds per 1080p frame, median
    masks: float  # seconds for the masks of all faces of the frame, median


def frame_1080p() -> np.ndarray:
    """InsightFace's t1 photo (six faces), scaled to 1080 rows and centred in a 1920x1080 frame."""
    photo = get_image("t1")
    scale = 1080 / photo.shape[0]
    photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    frame = np.zeros((1080, 1920, 3), np.uint8)
    left = (1920 - photo.shape[1]) // 2
    frame[:, left : left + photo.shape[1]] = photo[:1080, :1920]
    return frame


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(repeats: int, detector: Path) -> tuple[list[Row], int, float, float]:
    frame = frame_1080p()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        files = write_twins(scratch / "models", detector) | write_mask_twins(scratch / "models")
        prepare_repository(files, scratch / "repository", twins=True)
        with running_server(scratch / "repository", scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            swappers = {name: FaceSwapper(client, SwapOptions(**values)) for name, values in SETTINGS.items()}
            identity = swappers["box"].identity([SOURCE_PHOTO])
            (faces,) = swappers["box"].find_faces([frame])
            size = client.crop_size(contract.SWAP)
            cuts = [warp_face(frame, face.landmarks, template_for(size), size) for face in faces]
            crops, matrices = np.stack([crop for crop, _ in cuts]), [matrix for _, matrix in cuts]

            def whole(swapper):
                Cast([identity], None).process(swapper, [frame])

            def masks(swapper):
                FaceMasker(swapper.triton, swapper.options).masks(
                    [frame] * len(faces), faces, crops, matrices
                )

            for swapper in swappers.values():  # warm up every model and cache
                whole(swapper), masks(swapper)
            frames = {name: [] for name in SETTINGS}
            alone = {name: [] for name in SETTINGS}
            for _ in range(repeats):
                for name, swapper in swappers.items():
                    frames[name].append(timed(lambda s=swapper: whole(s)))
                    alone[name].append(timed(lambda s=swapper: masks(s)))
            client.close()
    rows = [Row(name, statistics.median(frames[name]), statistics.median(alone[name])) for name in SETTINGS]
    for row in rows:
        per_face = row.masks * 1000 / len(faces)
        print(f"{row.setting}: {row.frame * 1000:.0f} ms/frame, masks {per_face:.1f} ms/face", flush=True)
    return rows, len(faces), load_before, os.getloadavg()[0]


def report(rows: list[Row], faces: int, load_before: float, load_after: float, repeats: int) -> str:
    box = rows[0]
    lines = [
        measured_on(),
        "",
        f"Command: `.venv/bin/python -m scripts.bench_masks --repeats {repeats}`",
        "",
        f"A 1920x1080 frame holding InsightFace's t1 photo ({faces} faces), the real SCRFD-2.5G with the",
        "contract twins, the mask roles' twins included, the CPU rendering on a local Triton; medians of",
        "interleaved runs. The twins cost little, so the numbers measure what the orchestration adds",
        "per mask: the crop resized for the mask model, one more Triton call per frame (the landmarker's",
        "crop cut from the frame for area and mouth masks), the softening blur and the minimum; the real",
        "XSeg, BiSeNet and 2DFAN4 add their own inference on top (not measured here: no weights offline).",
        f"The machine's load average was {load_before:.1f} before the run and {load_after:.1f} after it.",
        "",
        "| masks | per 1080p frame | x box only | added per face | masks alone, per face |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.setting} | {row.frame * 1000:.0f} ms | x{row.frame / box.frame:.2f} | "
            f"{(row.frame - box.frame) * 1000 / faces:+.1f} ms | {row.masks * 1000 / faces:.2f} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", type=Path, default=SHARED_DETECTOR)
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    rows, faces, before, after = measure(args.repeats, args.detector)
    replace_section(args.output, TITLE, report(rows, faces, before, after, args.repeats))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
