#!/usr/bin/env python3
"""Live streams: per-frame latency and delivered frames/s for 1, 2, 4 and 8 concurrent webcam streams.

The service runs as `python -m orchestrator serve` against a local Triton serving the real SCRFD
detector with the contract twins (cheap swapper, so the numbers measure detection, tracking,
orchestration and batching). Each stream is a client like the live page: 640x480 JPEG frames of a
photo with two faces, at most the camera's rate (30 frames/s) and at most two frames in flight, the
latency taken from sending a frame to receiving its swapped frame. Triton's own counters tell how
many requests it merged into each execution of the swapper.

    .venv/bin/python -m scripts.bench_live [--seconds 15] [--streams 1 2 4 8] [--detector PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from websockets.asyncio.client import connect

from modelplane import contract
from modelplane.local_server import free_port, running_server
from modelplane.prepare import prepare_repository
from modelplane.twins import write_twins
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from tests.helpers.paths import ROOT

SHARED = ROOT.parent / "shared"
PHOTO = SHARED / "images" / "two_faces.jpg"
CAMERA_FPS = 30.0
IN_FLIGHT = 2
WARM_UP = 2.0  # seconds of each run left out of the figures


def camera_jpeg() -> bytes:
    """The photo 400 pixels high in a 640x480 grey frame, as a webcam page would send it."""
    photo = cv2.imread(str(PHOTO))
    photo = cv2.resize(photo, (round(photo.shape[1] * 400 / photo.shape[0]), 400))
    frame = np.full((480, 640, 3), 128, np.uint8)
    x, y = (640 - photo.shape[1]) // 2, 40
    frame[y : y + 400, x : x + photo.shape[1]] = photo
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


async def stream(url: str, frame: bytes, until: float, counted_from: float) -> dict:
    """One webcam-like client; its latencies and answers after the warm-up."""
    opening = {"type": "start", "sources": [base64.b64encode(PHOTO.read_bytes()).decode()]}
    latencies: list[float] = []
    sent: dict[int, float] = {}
    answered = -1
    dropped = 0
    swapped: list[int] = []
    async with connect(url, max_size=None) as socket:
        await socket.send(json.dumps(opening))
        assert json.loads(await socket.recv())["type"] == "ready"
        room = asyncio.Event()
        room.set()

        async def send() -> None:
            number = 0
            while time.monotonic() < until:
                await room.wait()
                sent[number] = time.perf_counter()
                await socket.send(frame)
                number += 1
                if number - answered - 1 >= IN_FLIGHT:
                    room.clear()
                await asyncio.sleep(1 / CAMERA_FPS)

        sender = asyncio.create_task(send())
        while time.monotonic() < until:
            try:
                header = json.loads(
                    await asyncio.wait_for(socket.recv(), max(until - time.monotonic(), 0.01))
                )
            except TimeoutError:
                break
            if header["type"] == "frame":
                await socket.recv()  # the swapped frame
                if time.monotonic() >= counted_from:
                    latencies.append(time.perf_counter() - sent[header["frame"]])
                    swapped.append(header["swapped"])
                dropped = header["dropped"]
            answered = header["frame"]
            room.set()
        sender.cancel()
    return {"latencies": latencies, "dropped": dropped, "swapped": swapped}


async def run_streams(url: str, count: int, seconds: float) -> dict:
    frame = camera_jpeg()
    start = time.monotonic()
    results = await asyncio.gather(
        *(stream(url, frame, start + WARM_UP + seconds, start + WARM_UP) for _ in range(count))
    )
    latencies = sorted(latency for result in results for latency in result["latencies"])
    return {
        "streams": count,
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "fps": len(latencies) / seconds,
        "dropped": sum(result["dropped"] for result in results),
        "faces": statistics.mean(faces for result in results for faces in result["swapped"]),
    }


def swap_batches(metrics_url: str) -> tuple[float, float]:
    """Triton's counters for `face_swap`, which in the CPU rendering runs the swapper with its pre- and
    post-processing as one batched model: (requests, executions)."""
    text = httpx.get(metrics_url, timeout=10).text
    values = {"nv_inference_request_success": 0.0, "nv_inference_exec_count": 0.0}
    for line in text.splitlines():
        for name in values:
            if line.startswith(name + "{") and f'model="{contract.SWAP}"' in line:
                values[name] += float(line.rsplit(" ", 1)[1])
    return values["nv_inference_request_success"], values["nv_inference_exec_count"]


def serve(triton_url: str, data: Path, port: int, log: Path) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACESWAP_")}
    env |= {"FACESWAP_LIVE_MAX_SESSIONS": "16", "FACESWAP_LIVE_MAX_FPS": "60"}
    command = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port)]
    command += ["--triton-url", triton_url, "--data-dir", str(data)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the service did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--detector", type=Path, default=SHARED / "models" / "scrfd_2.5g_kps.onnx")
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args()

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        files = write_twins(scratch / "models", args.detector)
        prepare_repository(files, scratch / "repository", twins=True)
        with running_server(scratch / "repository", scratch / "triton") as triton:
            port = free_port()
            service = serve(triton.grpc_url, scratch / "data", port, scratch / "service.log")
            metrics = f"http://127.0.0.1:{triton.metrics_port}/metrics"
            try:
                url = f"ws://127.0.0.1:{port}/v1/live"
                asyncio.run(run_streams(url, 1, 2.0))  # warm up the models and the service
                for count in args.streams:
                    requests, executions = swap_batches(metrics)
                    row = asyncio.run(run_streams(url, count, args.seconds))
                    requests_after, executions_after = swap_batches(metrics)
                    row["batch"] = (requests_after - requests) / max(executions_after - executions, 1)
                    rows.append(row)
                    print(
                        f"{count} streams: p50 {row['p50'] * 1000:.0f} ms, p95 {row['p95'] * 1000:.0f} ms, "
                        f"{row['fps']:.1f} frames/s delivered ({row['fps'] / count:.1f} per stream), "
                        f"{row['dropped']} dropped, {row['faces']:.2f} faces swapped per frame, "
                        f"{row['batch']:.2f} swap requests per Triton execution",
                        flush=True,
                    )
            finally:
                service.terminate()
                service.wait(60)
    load_after = os.getloadavg()

    by_count = {row["streams"]: row for row in rows}
    counts = args.streams
    ratio = by_count[max(by_count)]["fps"] / by_count[min(by_count)]["fps"]
    print(f"throughput {max(by_count)} streams / {min(by_count)} stream: x{ratio:.2f}")
    lines = [
        measured_on(),
        "",
        f"Command: `.venv/bin/python -m scripts.bench_live --seconds {args.seconds:g} "
        f"--streams {' '.join(map(str, counts))}`",
        "",
        "`WebSocket /v1/live` with the real SCRFD-2.5G detector and the contract twins on a local Triton",
        "(CPU rendering); the service as `python -m orchestrator serve`. Each stream sends 640x480 JPEG",
        f"frames of a photo with two faces at up to {CAMERA_FPS:g} frames/s with at most {IN_FLIGHT} in",
        "flight, as the live page does; faces are detected every 3 frames (the default) and tracked in",
        "between. Latency: from sending a frame to receiving it swapped. The last column is Triton's",
        "count of `face_swap` requests per execution (the CPU rendering runs the swapper inside it): above",
        "1, requests of different streams were batched.",
        "",
        "| streams | p50 latency | p95 latency | delivered frames/s (total) | per stream | dropped | "
        "faces swapped per frame | swap requests per execution |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['streams']} | {row['p50'] * 1000:.0f} ms | {row['p95'] * 1000:.0f} ms | "
            f"{row['fps']:.1f} | {row['fps'] / row['streams']:.1f} | {row['dropped']} | {row['faces']:.2f} | "
            f"{row['batch']:.2f} |"
        )
    lines += [
        "",
        f"Total delivered frames/s at {max(by_count)} streams over {min(by_count)} stream: **x{ratio:.2f}**.",
        f"Load average (1, 5, 15 min) before the run: {', '.join(f'{v:.1f}' for v in load_before)}; after: "
        f"{', '.join(f'{v:.1f}' for v in load_after)}.",
    ]
    replace_section(args.output, "Live streams", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
