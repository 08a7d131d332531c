#!/usr/bin/env python3
"""Capacity of one GPU host: GPU faces/s against the orchestrator's CPU frames/s.

Part A needs PyTorch and a CUDA GPU: inswapper_128's published layer structure (138 M
parameters, about 175 G multiply-adds a face) with random weights, fp16, channels-last, at the
batch sizes Triton's dynamic batcher forms: what the swapper role costs on the card.

Part B needs only numpy and OpenCV: this project's per-frame CPU work for a 1080p frame with six
faces (letterbox for the detector, 128 crops, paste-back with the feathered mask) on 1 to N
threads. Decode and encode (ffmpeg) come on top and are not in these numbers.

    python3 scripts/bench_gpu_host.py [--out DIR]      (run on the lent GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.faces.align import warp_face
from orchestrator.faces.blend import box_mask, paste_back
from orchestrator.faces.detect import letterbox

# Six faces of InsightFace's t1 photo (its SCRFD landmarks), scaled from 1280x886 to 1920x1080.
T1_LANDMARKS = np.array(
    [
        [[87, 330], [129, 306], [121, 337], [115, 369], [149, 350]],
        [[287, 211], [321, 195], [305, 228], [311, 245], [338, 231]],
        [[492, 319], [541, 332], [507, 361], [484, 367], [532, 378]],
        [[760, 396], [802, 401], [771, 431], [763, 438], [806, 442]],
        [[916, 119], [945, 114], [919, 150], [937, 171], [958, 166]],
        [[1148, 327], [1192, 322], [1168, 350], [1155, 366], [1196, 363]],
    ],
    np.float32,
) * np.array([1920 / 1280, 1080 / 886], np.float32)


def orchestration_per_frame(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The CPU work of one frame: letterbox for the detector, align each face, paste each back."""
    letterbox(frame, np.zeros((384, 640, 3), np.uint8), (640, 640))  # a 16:9 frame's canvas
    result = frame.copy()
    for landmarks in T1_LANDMARKS:
        crop, matrix = warp_face(frame, landmarks, "arcface_128", 128)
        paste_back(result, 255 - crop, mask, matrix)  # any swapped crop costs the same to paste
    return result


def cpu_part(threads: list[int], frames: int) -> list[dict]:
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (1080, 1920, 3), np.uint8) for _ in range(8)]
    mask = box_mask(128)
    rows = []
    for count in threads:
        cv2.setNumThreads(1)  # one frame per thread: the pipeline's parallelism is across frames
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda i: orchestration_per_frame(pictures[i % 8], mask), range(count * 2)))
            start = time.perf_counter()
            list(pool.map(lambda i: orchestration_per_frame(pictures[i % 8], mask), range(frames)))
            elapsed = time.perf_counter() - start
        rows.append(
            {"threads": count, "frames_per_s": frames / elapsed, "ms_per_frame": 1000 * elapsed / frames}
        )
        print(f"cpu: {count:2d} threads  {frames / elapsed:7.1f} frames/s", flush=True)
    return rows


def swapper_model():
    """inswapper_128's layer structure with random weights (PyTorch)."""
    import torch
    from torch import nn
    from torch.nn import functional

    class AdaIN(nn.Module):
        def __init__(self, channels: int, latent: int = 512):
            super().__init__()
            self.style = nn.Linear(latent, 2 * channels)

        def forward(self, x, latent):
            scale, shift = self.style(latent)[:, :, None, None].chunk(2, dim=1)
            return functional.instance_norm(x) * (1 + scale) + shift

    class Residual(nn.Module):
        def __init__(self, channels: int = 1024):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
            self.norm1, self.norm2 = AdaIN(channels), AdaIN(channels)

        def forward(self, x, latent):
            y = functional.relu(self.norm1(self.conv1(x), latent))
            return x + self.norm2(self.conv2(y), latent)

    class Swapper(nn.Module):
        def __init__(self):
            super().__init__()
            act = nn.LeakyReLU(0.2)
            self.encoder = nn.Sequential(
                nn.Conv2d(3, 128, 7, padding=3), act,
                nn.Conv2d(128, 256, 3, padding=1), act,
                nn.Conv2d(256, 512, 3, stride=2, padding=1), act,
                nn.Conv2d(512, 1024, 3, stride=2, padding=1), act,
            )  # fmt: skip
            self.blocks = nn.ModuleList(Residual() for _ in range(6))
            self.up1 = nn.Conv2d(1024, 512, 3, padding=1)
            self.up2 = nn.Conv2d(512, 256, 3, padding=1)
            self.conv3 = nn.Conv2d(256, 128, 3, padding=1)
            self.out = nn.Conv2d(128, 3, 7, padding=3)

        def forward(self, target, latent):
            x = self.encoder(target)
            for block in self.blocks:
                x = block(x, latent)
            x = functional.leaky_relu(
                self.up1(functional.interpolate(x, scale_factor=2, mode="bilinear")), 0.2
            )
            x = functional.leaky_relu(
                self.up2(functional.interpolate(x, scale_factor=2, mode="bilinear")), 0.2
            )
            x = functional.leaky_relu(self.conv3(x), 0.2)
            return (torch.tanh(self.out(x)) + 1) / 2

    return Swapper()


def gpu_part(batches: list[int]) -> dict:
    import torch

    device = torch.device("cuda")
    model = swapper_model().eval()
    parameters = sum(p.numel() for p in model.parameters())
    model = model.to(device, torch.float16).to(memory_format=torch.channels_last)
    rows = []
    with torch.inference_mode():
        for batch in batches:
            targets = [torch.rand(batch, 3, 128, 128, device=device, dtype=torch.float16) for _ in range(3)]
            targets = [t.contiguous(memory_format=torch.channels_last) for t in targets]
            latents = [
                torch.nn.functional.normalize(torch.randn(batch, 512, device=device), dim=1).half()
                for _ in range(3)
            ]
            output = model(targets[0], latents[0])
            assert torch.isfinite(output).all() and output.shape == (batch, 3, 128, 128)
            for i in range(3):  # warm-up: cuDNN picks its algorithms
                model(targets[i], latents[i])
            torch.cuda.synchronize()
            times = []
            for repeat in range(20):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(targets[repeat % 3], latents[repeat % 3])
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            seconds = statistics.median(times)
            rows.append({"batch": batch, "faces_per_s": batch / seconds, "ms_per_batch": 1000 * seconds})
            print(
                f"gpu: batch {batch:3d}  {batch / seconds:8.1f} faces/s  {1000 * seconds:7.2f} ms", flush=True
            )
    return {
        "device": torch.cuda.get_device_name(0),
        "parameters": parameters,
        "torch": torch.__version__,
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--cpu-only", action="store_true", help="part B only (no GPU here)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    results = {"cpu_cores": cores, "cpu": cpu_part(sorted({1, 2, 4, 8, cores}), args.frames)}
    if not args.cpu_only:
        results["gpu"] = gpu_part([1, 8, 16, 32, 64])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_host.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
