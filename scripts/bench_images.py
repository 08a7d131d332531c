#!/usr/bin/env python3
"""Images per second: this pipeline through Triton against InsightFace's per-image loop.

Both run on the same ONNX files (the real SCRFD from ../shared/models with the contract twins, or
the files given) and the same photo at about 1 MP and 8 MP, interleaved in one run; both start
from a decoded frame and a known source identity. The reference is what wiring InsightFace by
hand gives: detect, embed every face, then `INSwapper.get(paste_back=True)` face by face.

    scripts/bench_images.py [--repeats 5] [--detector PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from insightface.app.common import Face as ReferenceFace  # noqa: E402
from insightface.data import get_image  # noqa: E402
from insightface.model_zoo.arcface_onnx import ArcFaceONNX  # noqa: E402
from insightface.model_zoo.inswapper import INSwapper  # noqa: E402
from insightface.model_zoo.scrfd import SCRFD  # noqa: E402

from modelplane.local_server import running_server  # noqa: E402
from modelplane.prepare import prepare_repository  # noqa: E402
from modelplane.twins import write_twins  # noqa: E402
from orchestrator.pipeline import FaceSwapper  # noqa: E402
from orchestrator.triton import TritonClient  # noqa: E402
from scripts.benchmarks_doc import measured_on, replace_section  # noqa: E402

SHARED_DETECTOR = ROOT.parent / "shared" / "models" / "scrfd_2.5g_kps.onnx"


class Reference:
    """InsightFace's classes on the given files, used the way its examples use them."""

    def __init__(self, files: dict[str, Path]):
        self.detector = SCRFD(str(files["detector"]))
        self.detector.prepare(-1, input_size=(640, 640), det_thresh=0.5)
        self.recognizer = ArcFaceONNX(str(files["recognizer"]))
        self.recognizer.prepare(-1)
        self.swapper = INSwapper(str(files["swapper"]))

    def faces(self, frame):
        boxes, landmarks = self.detector.detect(frame, input_size=(640, 640))
        faces = [
            ReferenceFace(bbox=b[:4], kps=k, det_score=b[4]) for b, k in zip(boxes, landmarks, strict=True)
        ]
        for face in faces:
            self.recognizer.get(frame, face)
        return faces

    def swap(self, frame, source):
        result = frame
        for face in self.faces(frame):
            result = self.swapper.get(result, face, source, paste_back=True)
        return result


def twin_setup(scratch: Path, detector: Path, source_frame: np.ndarray):
    """The twins with the real detector, their repository, InsightFace on the same files, the source face."""
    files = write_twins(scratch / "models", detector)
    prepare_repository(files, scratch / "repository", twins=True)
    reference = Reference(files)
    source = max(
        reference.faces(source_frame), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])
    )
    return scratch / "repository", reference, source


def timed(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detector", type=Path, default=SHARED_DETECTOR)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()

    photo = get_image("t1")  # 1280x886, six faces
    sizes = {
        "1.1 MP": photo,
        "8.0 MP": cv2.resize(photo, None, fx=2.65, fy=2.65, interpolation=cv2.INTER_CUBIC),
    }
    source_path = ROOT.parent / "shared" / "images" / "two_faces.jpg"
    source_frame = cv2.imread(str(source_path))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        repository, reference, source = twin_setup(scratch, args.detector, source_frame)
        with running_server(repository, scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            swapper = FaceSwapper(client)
            identity = swapper.identity([source_path])

            def ours(frame):
                return swapper.process([frame], identity, None)[0][0]

            rows = []
            for label, frame in sizes.items():
                ours(frame), reference.swap(frame, source)  # warm up both
                agreement = np.abs(ours(frame).astype(float) - reference.swap(frame, source)).mean()
                ours_s, reference_s = [], []
                for _ in range(args.repeats):  # interleaved, so both see the same machine load
                    ours_s.append(timed(lambda f=frame: ours(f), 1))
                    reference_s.append(timed(lambda f=frame: reference.swap(f, source), 1))
                ours_t, reference_t = statistics.median(ours_s), statistics.median(reference_s)
                rows.append((label, frame.shape, ours_t, reference_t, agreement))
                print(
                    f"{label}: ours {ours_t * 1000:.0f} ms, InsightFace loop {reference_t * 1000:.0f} ms, "
                    f"x{reference_t / ours_t:.1f}, mean |ours - reference| {agreement:.2f} gray levels",
                    flush=True,
                )
            client.close()
    load_after = os.getloadavg()[0]

    lines = [
        measured_on(),
        "",
        f"Command: `scripts/bench_images.py --repeats {args.repeats}`",
        "",
        "The real SCRFD-2.5G detector with the recognizer and swapper contract twins (cheap models, so",
        "the numbers measure detection and the orchestration: letterbox, alignment, paste-back), 6 faces",
        "per photo, the CPU rendering of the repository on a local Triton. Medians of interleaved runs.",
        "Output agreement is the mean absolute difference to the reference's picture (the product's",
        "feathered box mask differs from InsightFace's on purpose).",
        f"The machine's load average was {load_before:.1f} before the run and {load_after:.1f} after it.",
        "",
        "| photo | pixels | this pipeline | InsightFace loop | speed-up | mean difference |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for label, shape, ours_t, reference_t, agreement in rows:
        lines.append(
            f"| t1, {label} | {shape[1]}x{shape[0]} | {1 / ours_t:.2f} img/s ({ours_t * 1000:.0f} ms) | "
            f"{1 / reference_t:.2f} img/s ({reference_t * 1000:.0f} ms) | x{reference_t / ours_t:.1f} | "
            f"{agreement:.2f} |"
        )
    replace_section(args.output, "Image pipeline against InsightFace", "\n".join(lines))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
