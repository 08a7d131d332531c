"""Images per second: this pipeline through Triton against InsightFace's per-image loop.

Both run on the same ONNX files (the real SCRFD from ../shared/models with the contract twins, or
the detector given) and the same photo at about 1 MP and 8 MP, interleaved in one run; both start
from a decoded frame and a known source identity. The reference is what wiring InsightFace by
hand gives: detect, embed every face, then `INSwapper.get(paste_back=True)` face by face.

    .venv/bin/python -m scripts.bench_images [--repeats 5] [--detector PATH]
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
from orchestrator.pipeline import FaceSwapper
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
                return swapper.process([frame], identity, None)[0][0]

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", type=Path, default=SHARED_DETECTOR)
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    results = measure(args.repeats, args.detector)
    replace_section(args.output, "Image pipeline against InsightFace", report(results, args.repeats))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
