#!/usr/bin/env python3
"""What tracking (and turned detector passes) cost per 1080p frame and per face, against the plain
pipeline, in one run.

The same 1080p clip as scripts.bench_video (six faces gliding over a test pattern) goes through
`swap_video` on the real SCRFD with the contract twins: without tracking, with `--tracking`, with
tracking and landmark smoothing, and with all four detector angles; the settings alternate run by
run, so each sees the same machine load, and the best run of each counts. The tracker's own time
per face is measured apart, on the faces the detector found in the clip.

    .venv/bin/python -m scripts.bench_tracking [--seconds 4] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
from insightface.data import get_image

from modelplane.local_server import running_server
from orchestrator.faces.track import VideoTracker
from orchestrator.media import FrameReader, probe
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.pipeline import swap_video
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from scripts.bench_video import PRESET, SIZES, make_clip
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from scripts.twin_stack import SHARED_DETECTOR, SOURCE_PHOTO, twin_setup

SETTINGS = {
    "plain (no tracking)": (SwapOptions(), {}),
    "tracking": (SwapOptions(), {"tracking": True}),
    "tracking + smoothing 0.5": (SwapOptions(), {"tracking": True, "landmark_smoothing": 0.5}),
    "detector angles 0,90,180,270": (SwapOptions(detector_angles="0,90,180,270"), {}),
}


def tracker_seconds_per_face(swapper: FaceSwapper, clip: Path) -> tuple[float, int]:
    """The tracker alone on the clip's detections: seconds per face, and the faces tracked."""
    with FrameReader(probe(clip)) as reader:
        detections = [swapper.find_faces([frame])[0] for frame in reader]
    faces = sum(map(len, detections))
    best = float("inf")
    for _ in range(5):
        tracker = VideoTracker(smoothing=0.5)
        start = time.perf_counter()
        for index, found in enumerate(detections):
            tracker.push(list(found), index)
        tracker.flush()
        best = min(best, time.perf_counter() - start)
    return best / faces, faces


def measure(args: argparse.Namespace) -> str:
    load_before = os.getloadavg()[0]
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photo = scratch / "t1.png"
        cv2.imwrite(str(photo), get_image("t1"))  # 1280x886, six faces
        clip = make_clip(photo, SIZES["1080p"], args.seconds, scratch / "clip_1080p.mp4")
        repository, _, _ = twin_setup(scratch, args.detector)
        with running_server(repository, scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            reports = {}
            for run in range(args.runs):
                for name, (options, video) in SETTINGS.items():
                    start = time.perf_counter()
                    reports[name] = swap_video(
                        FaceSwapper(client, options),
                        [SOURCE_PHOTO],
                        clip,
                        scratch / "out.mp4",
                        video=VideoOptions(preset=PRESET, **video),
                    )
                    seconds = time.perf_counter() - start
                    best[name] = min(best.get(name, seconds), seconds)
                    frames = reports[name].frames
                    print(f"run {run + 1} {name}: {seconds / frames * 1000:.1f} ms per frame", flush=True)
            per_face, faces = tracker_seconds_per_face(FaceSwapper(client), clip)
            client.close()
    frames = reports["plain (no tracking)"].frames
    plain = best["plain (no tracking)"]
    lines = [
        f"{measured_on()} `python -m scripts.bench_tracking --seconds {args.seconds} --runs {args.runs}`;"
        f" load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after.",
        "",
        f"The 1080p clip of scripts.bench_video ({frames} frames, six faces gliding), the whole job from"
        " file to file (x264 veryfast), best of the runs; the settings alternate run by run.",
        "",
        "| setting | ms per frame | against plain | faces found | faces swapped |",
        "|---|---|---|---|---|",
    ]
    for name, seconds in best.items():
        ms, ratio, report = seconds / frames * 1000, seconds / plain, reports[name]
        lines.append(f"| {name} | {ms:.1f} | x{ratio:.2f} | {report.faces} | {report.swapped} |")
    lines += [
        "",
        f"The tracker alone (matching, filling, smoothing; no model calls): {per_face * 1e6:.0f} µs per face"
        f" over the {faces} faces of the clip, {per_face * faces / frames * 1000:.2f} ms per frame.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the clip")
    parser.add_argument(
        "--runs", type=int, default=2, help="runs of each setting, alternating; the best counts"
    )
    parser.add_argument("--detector", type=Path, default=SHARED_DETECTOR)
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    body = measure(args)
    print(body)
    replace_section(args.output, "Face tracking and turned detector passes", body)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
