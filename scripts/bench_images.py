"""Images per second: this pipeline through Triton against InsightFace's per-image loop.

Both run on the same ONNX files (the real SCRFD from ../shared/models with the contract twins, or
the detector given) and the same photo at about 1 MP and 8 MP, interleaved in one run; both start
from a decoded frame and a known source identity. The reference is what wiring InsightFace by
hand gives: detect, embed every face, then `INSwapper.get(paste_back=True)` face by face.

It also measures pixel boost (256 and 512 against none) on the swap step, in its own section.

    .venv/bin/python -m scripts.bench_images [--repeats 5] [--detector PATH] [--only images|pixel-boost]
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

from modelplane.local_server import running_server
from orchestrator.casting import Cast
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from scripts.twin_stack import SHARED_DETECTOR, SOURCE_PHOTO, twin_setup


@dataclass
class Row:
    label: str
    shape: tuple[int, ...]
    ours: float  # seconds per image, median
    reference: float
    agreement: float  # mean absolute difference of the two pictures, gray levels


@dataclass
class Results:
    rows: list[Row]
    load_before: float
    load_after: float


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(repeats: int, detector: Path) -> Results:
    photo = get_image("t1")  # 1280x886, six faces
    sizes = {
        "1.1 MP": photo,
        "8.0 MP": cv2.resize(photo, None, fx=2.65, fy=2.65, interpolation=cv2.INTER_CUBIC),
    }
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        repository, reference, source = twin_setup(scratch, detector)
        with running_server(repository, scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            swapper = FaceSwapper(client)
            identity = swapper.identity([SOURCE_PHOTO])

            def ours(frame):
                return Cast([identity], None).process(swapper, [frame])[0][0]

            for label, frame in sizes.items():
                ours(frame), reference.swap(frame, source)  # warm up both
                agreement = np.abs(ours(frame).astype(float) - reference.swap(frame, source)).mean()
                ours_s, reference_s = [], []
                for _ in range(repeats):  # interleaved, so both see the same machine load
                    ours_s.append(timed(lambda f=frame: ours(f)))
                    reference_s.append(timed(lambda f=frame: reference.swap(f, source)))
                row = Row(
                    label, frame.shape, statistics.median(ours_s), statistics.median(reference_s), agreement
                )
                rows.append(row)
                print(
                    f"{label}: ours {row.ours * 1000:.0f} ms, "
                    f"InsightFace loop {row.reference * 1000:.0f} ms, "
                    f"x{row.reference / row.ours:.1f}, mean |ours - reference| {agreement:.2f} gray levels",
                    flush=True,
                )
            client.close()
    return Results(rows, load_before, os.getloadavg()[0])


def report(results: Results, repeats: int) -> str:
    lines = [
        measured_on(),
        "",
        f"Command: `.venv/bin/python -m scripts.bench_images --repeats {repeats}`",
        "",
        "The real SCRFD-2.5G detector with the recognizer and swapper contract twins (cheap models, so",
        "the numbers measure detection and the orchestration: letterbox, alignment, paste-back), 6 faces",
        "per photo, the CPU rendering of the repository on a local Triton. Medians of interleaved runs.",
        "Output agreement is the mean absolute difference to the reference's picture (the product's",
        "feathered box mask differs from InsightFace's on purpose).",
        f"The machine's load average was {results.load_before:.1f} before the run and "
        f"{results.load_after:.1f} after it.",
        "",
        "| photo | pixels | this pipeline | InsightFace loop | speed-up | mean difference |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in results.rows:
        lines.append(
            f"| t1, {row.label} | {row.shape[1]}x{row.shape[0]} | {1 / row.ours:.2f} img/s "
            f"({row.ours * 1000:.0f} ms) | {1 / row.reference:.2f} img/s ({row.reference * 1000:.0f} ms) | "
            f"x{row.reference / row.ours:.1f} | {row.agreement:.2f} |"
        )
    return "\n".join(lines)


# --- pixel boost: faces per second with the face aligned at 256 and 512 against no boost

BOOSTS = (None, 256, 512)


@dataclass
class BoostRow:
    boost: int | None
    faces: int
    seconds: float  # per swap of all faces of the photo, median
    parts: int  # swapper crops per face


def measure_boost(repeats: int, detector: Path) -> tuple[list[BoostRow], float, float]:
    """The swap step alone (align, one batched swapper request, interleave, paste back) on the faces
    of one photo, each boost interleaved with the others; (rows, load before, load after)."""
    frame = get_image("t1")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        repository, _, _ = twin_setup(scratch, detector)
        with running_server(repository, scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            swappers = {boost: FaceSwapper(client, SwapOptions(pixel_boost=boost)) for boost in BOOSTS}
            identity = swappers[None].identity([SOURCE_PHOTO])
            faces = swappers[None].find_faces([frame])
            times: dict[int | None, list[float]] = {boost: [] for boost in BOOSTS}
            for swapper in swappers.values():  # warm up
                swapper.swap_frames([frame], faces, identity)
            for _ in range(repeats):
                for boost, swapper in swappers.items():
                    times[boost].append(timed(lambda s=swapper: s.swap_frames([frame], faces, identity)))
            client.close()
    count = len(faces[0])
    rows = [BoostRow(b, count, statistics.median(times[b]), swappers[b].boost ** 2) for b in BOOSTS]
    for row in rows:
        print(f"pixel boost {row.boost or 'none'}: {row.faces / row.seconds:.1f} faces/s", flush=True)
    return rows, load_before, os.getloadavg()[0]


def boost_report(rows: list[BoostRow], load_before: float, load_after: float, repeats: int) -> str:
    plain = rows[0]
    lines = [
        measured_on(),
        "",
        f"Command: `.venv/bin/python -m scripts.bench_images --repeats {repeats} --only pixel-boost`",
        "",
        "The swap step alone (alignment at the boosted size, the k² interleaved crops of all faces in one",
        "swapper request, re-interleaving, paste-back with the mask at the boosted size) on the",
        f"{plain.faces} faces of t1 (1280x886), with the swapper contract twin (128 pixels) on a local",
        "Triton's CPU rendering, so it measures the orchestration and the batching, not a real swapper.",
        f"Medians of interleaved runs. The machine's load average was {load_before:.1f} before and "
        f"{load_after:.1f} after.",
        "",
        "| pixel boost | swapper crops per face | faces/s | ms per face | time against no boost |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.boost or 'none (128)'} | {row.parts} | {row.faces / row.seconds:.1f} | "
            f"{row.seconds / row.faces * 1000:.1f} | x{row.seconds / plain.seconds:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", type=Path, default=SHARED_DETECTOR)
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    parser.add_argument("--only", choices=("images", "pixel-boost"), help="run one of the two measurements")
    args = parser.parse_args()
    if args.only != "pixel-boost":
        results = measure(args.repeats, args.detector)
        replace_section(args.output, "Image pipeline against InsightFace", report(results, args.repeats))
    if args.only != "images":
        rows, before, after = measure_boost(args.repeats, args.detector)
        replace_section(args.output, "Pixel boost", boost_report(rows, before, after, args.repeats))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
