#!/usr/bin/env python3
"""Video frames per second: this pipeline through Triton against InsightFace's per-frame loop.

Both run on the same ONNX files (the real SCRFD from ../shared/models with the contract twins, or
the detector given) and the same generated clips, a six-face photo moving over a test pattern at
720p and 1080p with a sine audio track, interleaved in one run. Both time the whole job, from the
clip file to the finished output file. The reference is what wiring InsightFace by hand gives:
OpenCV decode, detect, embed every face, `INSwapper.get(paste_back=True)` face by face, OpenCV
encode (mp4v, no audio); ours is `swap_video`, which also keeps the audio.

It also reports where our time goes (seconds per pipeline stage, CPU per process, how busy the
detector was), what x264 costs alone at a few presets, and with --sweep how the chunking settings
compare on the last clip.

    .venv/bin/python -m scripts.bench_video [--seconds 4] [--runs 2] [--preset veryfast] [--chunk-frames N]
                           [--chunks-in-flight N] [--sizes 720p 1080p] [--detector PATH]
                           [--sweep 4x2 4x3 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from insightface.data import get_image

from modelplane.local_server import running_server
from orchestrator.media import FrameReader, FrameWriter, probe
from orchestrator.options import VideoOptions
from orchestrator.pipeline import SwapReport, Throughput, swap_video
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from scripts.cpu_time import tree_cpu_seconds
from scripts.twin_stack import SHARED_DETECTOR, SOURCE_PHOTO, twin_setup
from tests.helpers.reference import InsightFaceReference

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 25
PHOTO_HEIGHT = 0.7  # of the frame height: faces about 30x40 px in the 640 letterbox, at both sizes
STAGES = ("decode", "detect", "embed", "align", "swap", "paste", "encode")
CHECKED_FRAMES = 10  # frames per clip whose faces are counted before timing
PRESET = "veryfast"
ENCODE_PRESETS = ("ultrafast", "veryfast", "medium")  # compared alone; veryfast is the default


def make_clip(photo: Path, size: tuple[int, int], seconds: float, path: Path) -> Path:
    """The photo gliding over ffmpeg's testsrc2 pattern, with a 440 Hz tone: H.264 and AAC in MP4."""
    width, height = size
    motion = f"x='(W-w)/2*(1+sin(2*PI*t/{seconds}))':y='(H-h)/2*(1+0.5*sin(4*PI*t/{seconds}))'"
    graph = (
        f"[1:v]scale=-2:{round(height * PHOTO_HEIGHT) // 2 * 2}[photo];"
        f"[0:v][photo]overlay={motion}:shortest=1,format=yuv420p[video]"
    )
    subprocess.run(
        ["/usr/bin/ffmpeg", "-nostdin", "-v", "error", "-y"]
        + ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={FPS}"]
        + ["-loop", "1", "-framerate", str(FPS), "-i", str(photo)]
        + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        + ["-filter_complex", graph, "-map", "[video]", "-map", "2:a", "-t", str(seconds)]
        + ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-b:a", "128k", str(path)],
        check=True,
    )
    return path


class CpuClock:
    """CPU seconds of this process, of its reaped children (ffmpeg) and of the Triton server."""

    def __init__(self, server_pid: int | None, server_url: str | None = None):
        self.server_pid = server_pid
        self.server_url = server_url

    def detector_seconds(self) -> float:
        """Seconds face_detect's executions have taken (Triton's statistics per batch), 0 without a server."""
        if not self.server_url:
            return 0.0
        with urllib.request.urlopen(f"{self.server_url}/v2/models/face_detect/stats", timeout=5) as reply:
            stats = json.loads(reply.read())["model_stats"]
        return sum(int(b["compute_infer"]["ns"]) for m in stats for b in m.get("batch_stats", [])) / 1e9

    def read(self) -> dict[str, float]:
        own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return {
            "orchestrator": own.ru_utime + own.ru_stime,
            "ffmpeg": children.ru_utime + children.ru_stime,
            "Triton": tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0,
        }

    def since(self, start: dict[str, float]) -> dict[str, float]:
        return {name: seconds - start[name] for name, seconds in self.read().items()}


def faces_per_frame(swapper: FaceSwapper, clip: Path) -> list[int]:
    """Faces our detector finds in frames spread evenly over the clip."""
    info = probe(clip)
    picked = set(np.linspace(0, info.frame_count - 1, CHECKED_FRAMES).round().astype(int))
    with FrameReader(info) as reader:
        frames = [frame for i, frame in enumerate(reader) if i in picked]
    return [len(faces) for faces in swapper.find_faces(frames)]


def reference_video(reference: InsightFaceReference, source, clip: Path, output: Path) -> tuple[int, int]:
    """InsightFace's loop over a video with OpenCV's reader and writer: (frames, faces found)."""
    capture = cv2.VideoCapture(str(clip))
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    writer = cv2.VideoWriter(str(output), fourcc, capture.get(cv2.CAP_PROP_FPS), size)
    frames = faces = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        found = reference.faces(frame)
        for face in found:
            frame = reference.swapper.get(frame, face, source, paste_back=True)
        writer.write(frame)
        frames, faces = frames + 1, faces + len(found)
    capture.release()
    writer.release()
    return frames, faces


def encode_costs(clip: Path, presets: list[str], scratch: Path) -> dict[str, tuple[float, int]]:
    """x264 alone on the clip's frames through the pipeline's own reader and writer: per preset, the
    encode's CPU seconds per frame (ffmpeg's CPU for a copy less that for reading only) and the file size."""

    def ffmpeg_cpu(preset: str | None) -> tuple[float, int]:
        info, output = probe(clip), scratch / f"encode_{preset}.mp4"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with FrameReader(info) as reader:
            if preset is None:
                frames = sum(1 for _ in reader)
            else:
                options = VideoOptions(preset=preset)
                with FrameWriter(
                    output, width=info.width, height=info.height, fps=info.fps, options=options
                ) as out:
                    frames = 0
                    for frame in reader:
                        out.write(frame)
                        frames += 1
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return used / frames, output.stat().st_size if preset else 0

    decode, _ = ffmpeg_cpu(None)
    costs = {}
    for preset in presets:
        copy, size = ffmpeg_cpu(preset)
        costs[preset] = (copy - decode, size)
    return costs


@dataclass
class Run:
    seconds: float  # wall time of the whole job
    cpu: dict[str, float]  # CPU seconds by process, see CpuClock
    frames: int
    faces: int
    report: SwapReport | None = None  # ours only
    detector: float = 0.0  # seconds face_detect computed during the job

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def busy(self) -> float:
        """Cores the job kept busy on average."""
        return sum(self.cpu.values()) / self.seconds

    def per_frame(self, seconds: float) -> str:
        return f"{seconds / self.frames * 1000:.1f}"


def timed(clock: CpuClock, job: Callable[[], tuple[int, int, SwapReport | None]]) -> Run:
    cpu, detector, start = clock.read(), clock.detector_seconds(), time.perf_counter()
    frames, faces, report = job()
    seconds = time.perf_counter() - start
    return Run(seconds, clock.since(cpu), frames, faces, report, clock.detector_seconds() - detector)


def sweep_lines(results: dict[tuple[int, int], Run], label: str, runs: int) -> list[str]:
    """The chunking settings side by side: best of `runs` alternating runs each, on one clip."""
    lines = [
        "",
        f"Chunking settings on the {label} clip (`--sweep`), best of {runs} alternating runs each:",
        "frames per chunk (one detector request each) and chunks processed at once. *Detector busy*",
        "is the share of the wall time Triton spent computing face_detect; CPU in ms per frame.",
        "",
        "| frames per chunk | chunks in flight | fps | CPU per frame | cores busy | detector busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (frames, in_flight), run in results.items():
        lines.append(
            f"| {frames} | {in_flight} | {run.fps:.2f} | {run.per_frame(sum(run.cpu.values()))} | "
            f"{run.busy:.2f} | {run.detector / run.seconds:.0%} |"
        )
    return lines


@dataclass
class Results:
    rows: list[tuple[str, Run, Run]]  # clip label, best run of this pipeline, best of the reference
    checked: dict[str, list[int]]  # faces found per checked frame, by clip
    encoding: dict[str, tuple[float, int]]  # x264 preset -> (CPU seconds per frame, file bytes)
    encode_label: str
    swept: dict[tuple[int, int], list[Run]]  # (frames per chunk, chunks in flight) -> runs
    load_before: float
    load_after: float


def measure(args: argparse.Namespace) -> Results:
    """Both sides on every clip, alternating, then the encoder alone and the chunking sweep."""
    video = VideoOptions(preset=args.preset)
    throughput = Throughput(args.chunk_frames, args.chunks_in_flight)
    settings = [tuple(int(n) for n in setting.split("x")) for setting in args.sweep]
    source_path = SOURCE_PHOTO
    rows, checked = [], {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photo = scratch / "t1.png"
        cv2.imwrite(str(photo), get_image("t1"))  # 1280x886, six faces
        clips = {
            label: make_clip(photo, SIZES[label], args.seconds, scratch / f"clip_{label}.mp4")
            for label in args.sizes
        }
        encode_label = list(clips)[-1]
        presets = list(dict.fromkeys([*ENCODE_PRESETS, args.preset]))
        encoding = encode_costs(clips[encode_label], presets, scratch)
        for preset, (cpu, size) in encoding.items():
            print(
                f"{encode_label} x264 {preset} alone: {cpu * 1000:.1f} ms CPU per frame, {size / 1e6:.2f} MB"
            )
        repository, reference, source = twin_setup(scratch, args.detector)
        with running_server(repository, scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            clock = CpuClock(server.pid(), server.url)

            def ours(clip: Path, chunking: Throughput = throughput) -> tuple[int, int, SwapReport]:
                report = swap_video(
                    FaceSwapper(client),
                    [source_path],
                    clip,
                    scratch / "ours.mp4",
                    video=video,
                    throughput=chunking,
                )
                return report.frames, report.faces, report

            def theirs(clip: Path) -> tuple[int, int, None]:
                return *reference_video(reference, source, clip, scratch / "reference.mp4"), None

            for label, clip in clips.items():
                counts = checked[label] = faces_per_frame(FaceSwapper(client), clip)
                print(f"{label}: faces our detector finds in {len(counts)} frames: {counts}", flush=True)
                ours_runs, reference_runs = [], []
                for run in range(args.runs):  # alternating, so both see the same machine load
                    ours_runs.append(timed(clock, lambda c=clip: ours(c)))
                    reference_runs.append(timed(clock, lambda c=clip: theirs(c)))
                    print(
                        f"{label} run {run + 1}: ours {ours_runs[-1].fps:.2f} fps, "
                        f"InsightFace loop {reference_runs[-1].fps:.2f} fps",
                        flush=True,
                    )
                best_ours = min(ours_runs, key=lambda r: r.seconds)
                best_reference = min(reference_runs, key=lambda r: r.seconds)
                rows.append((label, best_ours, best_reference))
                stages = ", ".join(
                    f"{stage} {best_ours.per_frame(best_ours.report.seconds.get(stage, 0))}"
                    for stage in STAGES
                )
                print(
                    f"{label}: ours {best_ours.fps:.2f} fps, InsightFace loop {best_reference.fps:.2f} fps, "
                    f"x{best_ours.fps / best_reference.fps:.1f}; ms per frame by stage: {stages}",
                    flush=True,
                )
            swept: dict[tuple[int, int], list[Run]] = {setting: [] for setting in settings}
            for _ in range(args.runs if settings else 0):  # alternating, as above
                for frames, in_flight in settings:
                    chunking = Throughput(frames, in_flight)
                    run = timed(clock, lambda c=chunking: ours(clips[encode_label], c))
                    swept[(frames, in_flight)].append(run)
                    print(f"{frames} frames x {in_flight} chunks: {run.fps:.2f} fps", flush=True)
            client.close()

    return Results(rows, checked, encoding, encode_label, swept, load_before, os.getloadavg()[0])


def report(results: Results, args: argparse.Namespace) -> str:
    """The section of docs/benchmarks.md: the comparison, the stage and CPU tables, the encoder, the sweep."""
    video = VideoOptions(preset=args.preset)
    throughput = Throughput(args.chunk_frames, args.chunks_in_flight)
    rows, checked, encoding, encode_label = (
        results.rows,
        results.checked,
        results.encoding,
        results.encode_label,
    )
    load_before, load_after = results.load_before, results.load_after
    command = f".venv/bin/python -m scripts.bench_video --seconds {args.seconds:g} --runs {args.runs}"
    command += f" --preset {args.preset}"
    command += f" --chunk-frames {args.chunk_frames} --chunks-in-flight {args.chunks_in_flight}"
    command += f" --sizes {' '.join(args.sizes)}" if args.sizes != list(SIZES) else ""
    command += f" --sweep {' '.join(args.sweep)}" if args.sweep else ""
    fewest, most = min(min(c) for c in checked.values()), max(max(c) for c in checked.values())
    found = str(fewest) if fewest == most else f"{fewest} to {most}"
    lines = [
        measured_on(),
        "",
        f"Command: `{command}`",
        "",
        f"Clips made by the benchmark with ffmpeg: InsightFace's `t1` photo (six faces) scaled to "
        f"{PHOTO_HEIGHT:.0%} of the",
        f"frame height, gliding over `testsrc2`; {args.seconds:g} s at {FPS} fps, libx264 ultrafast, "
        "a 440 Hz AAC track.",
        "The real SCRFD-2.5G detector with the recognizer and swapper contract twins (cheap models, so",
        "the numbers measure the orchestration), the CPU rendering of the repository on a local Triton.",
        f"Our detector finds {found} faces in each of {CHECKED_FRAMES} frames spread over each clip.",
        f"Each side times the whole job, clip file to output file; best of {args.runs} alternating runs.",
        f"This pipeline: `swap_video` with x264 `{args.preset}` (CRF {video.crf}), {throughput.chunk_frames} "
        f"frames per chunk, {throughput.chunks_in_flight} chunks",
        "in flight, audio kept. InsightFace loop: `cv2.VideoCapture`, `SCRFD.detect`, `ArcFaceONNX.get`",
        "per face, `INSwapper.get(paste_back=True)` per face, `cv2.VideoWriter` mp4v, no audio.",
        "",
        f"The machine's load average was {load_before:.1f} before the run and {load_after:.1f} after it"
        " (other work shares these cores).",
        "",
        "Speed-up is the ratio of frames per second; CPU ratio that of the CPU time per frame (all",
        "processes), the reference's over ours. On a loaded machine the scheduler shares the cores per",
        "thread, which favours this pipeline's several processes over the reference's single one; the CPU",
        "ratio does not depend on that.",
        "",
        "| clip | frames | faces per frame | this pipeline | InsightFace loop | speed-up | CPU ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, ours_run, reference_run in rows:
        width, height = SIZES[label]
        cpu_ratio = (sum(reference_run.cpu.values()) / reference_run.frames) / (
            sum(ours_run.cpu.values()) / ours_run.frames
        )
        lines.append(
            f"| {label} ({width}x{height}) | {ours_run.frames} | {ours_run.faces / ours_run.frames:.1f} "
            f"(reference {reference_run.faces / reference_run.frames:.1f}) | {ours_run.fps:.2f} fps | "
            f"{reference_run.fps:.2f} fps | x{ours_run.fps / reference_run.fps:.2f} | x{cpu_ratio:.2f} |"
        )
    lines += [
        "",
        "Where this pipeline's time goes, in ms per frame: each stage's seconds summed over the threads",
        "that ran it (chunks are processed concurrently, so the stages add up to more than the wall",
        "time). `decode` is time spent waiting for decoded frames, `encode` time spent handing frames",
        "to ffmpeg's pipe; `detect` and `swap` include the Triton round trips and the wait in its queue.",
        "*Detector busy*: the share of the wall time Triton spent computing face_detect.",
        "",
        "| clip | wall | " + " | ".join(STAGES) + " | detector busy |",
        "| --- | ---: | " + " | ".join("---:" for _ in STAGES) + " | ---: |",
    ]
    for label, ours_run, _ in rows:
        cells = [ours_run.per_frame(ours_run.report.seconds.get(stage, 0)) for stage in STAGES]
        lines.append(
            f"| {label} | {ours_run.per_frame(ours_run.seconds)} | "
            + " | ".join(cells)
            + f" | {ours_run.detector / ours_run.seconds:.0%} |"
        )
    lines += [
        "",
        "CPU time per frame by process, in ms (this process: the orchestrator, or the whole InsightFace",
        "loop; Triton: the server and its model processes; ffmpeg: decode and encode children), and how",
        f"many of the {os.cpu_count()} cores the job kept busy on average (fewer: it waited on a stage "
        "or on other programs).",
        "",
        "| clip | side | wall | this process | Triton | ffmpeg | cores busy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, *runs in rows:
        for side, run in zip(("this pipeline", "InsightFace loop"), runs, strict=True):
            cells = [run.per_frame(run.cpu[name]) for name in ("orchestrator", "Triton", "ffmpeg")]
            lines.append(
                f"| {label} | {side} | {run.per_frame(run.seconds)} | "
                + " | ".join(cells)
                + f" | {run.busy:.2f} |"
            )
    lines += [
        "",
        f"The encode alone, on the {encode_label} clip's frames through the pipeline's own reader and "
        f"writer (x264, CRF {video.crf}):",
        "ffmpeg's CPU time per frame for the copy less that for the reading, and the file it wrote.",
        "",
        "| x264 preset | encode CPU per frame | frames per second per core | file size |",
        "| --- | ---: | ---: | ---: |",
    ]
    for preset, (cpu, size) in encoding.items():
        chosen = " (used above)" if preset == args.preset else ""
        lines.append(f"| {preset}{chosen} | {cpu * 1000:.1f} ms | {1 / cpu:.0f} | {size / 1e6:.2f} MB |")
    if results.swept:
        best = {setting: max(runs, key=lambda r: r.fps) for setting, runs in results.swept.items()}
        lines += sweep_lines(best, encode_label, args.runs)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--runs", type=int, default=2, help="runs of each side, alternating; the best counts")
    parser.add_argument("--preset", default=PRESET, help="x264 preset of this pipeline's encode")
    defaults = Throughput()
    parser.add_argument("--chunk-frames", type=int, default=defaults.chunk_frames)
    parser.add_argument(
        "--chunks-in-flight", type=int, default=defaults.chunks_in_flight, help="default: for this machine"
    )
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--detector", type=Path, default=SHARED_DETECTOR)
    parser.add_argument(
        "--sweep", nargs="*", default=[], metavar="FRAMESxCHUNKS", help="chunking settings to compare"
    )
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    results = measure(args)
    replace_section(args.output, "Video pipeline against InsightFace", report(results, args))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
