#!/usr/bin/env python3
"""perf_analyzer against every model and ensemble of a running Triton; writes docs/benchmarks.md.

For each model and concurrency it records throughput, p50/p99 latency and the average batch the
server formed (from Triton's own counters: inferences / executions of the model, or of an
ensemble's main model, during the run). Then it sets what `face_detect` costs Triton (CPU seconds
of the server's processes per image, under perf_analyzer) beside what the same detector file costs
ONNX Runtime alone, and the size of its answer. Run it through scripts/bench_models.sh, which
starts the local server first.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import re
import resource
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
from insightface.data import get_image

from modelplane import contract
from modelplane.configs import from_text
from modelplane.local_server import from_environment
from modelplane.prepare import read_stamp
from orchestrator.faces.detect import letterbox
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from scripts.cpu_time import tree_cpu_seconds
from tests.helpers.paths import ROOT

ENV = ROOT / ".triton-env"
PERF_ANALYZER = ENV / "bin" / "perf_analyzer"
COUNTER = re.compile(
    r'^(nv_inference_count|nv_inference_exec_count)\{model="([^"]+)",version="\d+"\} (\d+)', re.M
)


def counters(metrics_url: str) -> dict[tuple[str, str], int]:
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    return {(name, model): int(value) for name, model, value in COUNTER.findall(text)}


def cpu_config(repository: Path, model: str):
    """A model's configuration in the CPU rendering the local server runs."""
    cpu = repository / model / "configs" / "cpu.pbtxt"
    return from_text((cpu if cpu.is_file() else repository / model / "config.pbtxt").read_text())


def main_model(repository: Path, model: str) -> str:
    """The model whose batches matter: the model itself (a fused ensemble of the CPU rendering
    included), or an ensemble's non pre/post step."""
    steps = [s.model_name for s in cpu_config(repository, model).ensemble_scheduling.step]
    core = [s for s in steps if not s.endswith(("_preprocess", "_postprocess"))]
    return core[0] if core else model


def perf_analyzer(
    model: str,
    grpc_url: str,
    concurrency: int,
    interval_ms: int,
    data: Path | None = None,
    batch: int = 1,
    shapes: list[str] = (),
) -> dict[str, float]:
    site = next(ENV.glob("lib/python3*/site-packages"))
    env = dict(os.environ, LD_LIBRARY_PATH=str(site / "nvidia" / "cuda_runtime" / "lib"))
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.csv"
        command = [
            str(PERF_ANALYZER),
            "-m",
            model,
            "-i",
            "grpc",
            "-u",
            grpc_url,
            f"--concurrency-range={concurrency}",
            f"--measurement-interval={interval_ms}",
            "--stability-percentage=100",
            "--max-trials=6",
            "-b",
            str(batch),
            "-f",
            str(report),
        ]
        if data is not None:
            command.append(f"--input-data={data}")
        command += [f"--shape={shape}" for shape in shapes]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0 or not report.exists():
            tail = (result.stdout + result.stderr).strip().splitlines()[-1:]
            raise RuntimeError(f"perf_analyzer failed on {model}: {' '.join(tail)}")
        row = next(csv.DictReader(report.open()))
    return {
        "throughput": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def photo_canvas() -> np.ndarray:
    """InsightFace's six-face `t1` photo letterboxed into SCRFD's 640x640 input."""
    canvas = np.zeros((640, 640, 3), np.uint8)
    letterbox(get_image("t1"), canvas)
    return canvas


def image_shapes(repository: Path, model: str, canvas: np.ndarray) -> list[str]:
    """perf_analyzer's --shape for inputs of any size (the detector's): the canvas's, HWC or CHW."""
    shapes = []
    for tensor in cpu_config(repository, model).input:
        if list(tensor.dims) == [-1, -1, 3]:
            shapes.append(f"{tensor.name}:{','.join(map(str, canvas.shape))}")
        elif list(tensor.dims) == [3, -1, -1]:
            shapes.append(f"{tensor.name}:3,{canvas.shape[0]},{canvas.shape[1]}")
    return shapes


def input_data(repository: Path, model: str, client, canvas: np.ndarray, scratch: Path) -> Path | None:
    """perf_analyzer's --input-data where random data would not do: a model with optional inputs
    (thresholds, which must lie in 0..1) gets the photo, or the detector's raw outputs for it,
    and no thresholds, so the graph's defaults apply. None: random data."""
    config = cpu_config(repository, model)
    if not any(t.optional for t in config.input):
        return None
    required = [t.name for t in config.input if not t.optional]
    if required == ["image"]:
        tensors = {"image": canvas}
    else:
        image = grpcclient.InferInput("image", [1, *canvas.shape], "UINT8")
        image.set_data_from_numpy(canvas[None])
        raw = client.infer(contract.DETECT_RAW, [image])
        tensors = {name: raw.as_numpy(name) for name in required}
    entry = {
        name: {"b64": base64.b64encode(array.tobytes()).decode(), "shape": list(array.shape)}
        for name, array in tensors.items()
    }
    path = scratch / f"{model}.json"
    path.write_text(json.dumps({"data": [entry]}))
    return path


def ort_cost(model_file: Path, blob: np.ndarray, threads: int, seconds: float) -> tuple[float, float]:
    """CPU and wall ms per image of ONNX Runtime alone on `blob` (one batch), threaded as the CPU
    rendering's backend threads the model (`threads` intra-op threads, no spinning)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: blob}
    session.run(None, feeds)
    before, start, images = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        images += len(blob)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return cpu / images * 1000, wall / images * 1000


def detection_costs(args, client, canvas: np.ndarray, data: Path, batches: list[int]) -> list[tuple]:
    """Per batch size: ONNX Runtime alone against Triton's face_detect, CPU and wall ms per image,
    and face_detect's answer in bytes per image."""
    server = from_environment(args.repository).pid()
    if server is None:
        raise RuntimeError("the local server's pid file names no running tritonserver")
    rendering = cpu_config(args.repository, contract.DETECT)
    threads = max(1, len(os.sched_getaffinity(0)) // sum(g.count for g in rendering.instance_group))
    mean, std = 127.5, 128.0  # detector_preprocess: RGB, (pixel - 127.5) / 128
    blob = ((canvas[:, :, ::-1].astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]
    rows = []
    for batch in batches:
        detector = args.repository / "detector" / "1" / "model.onnx"
        ort_cpu, ort_wall = ort_cost(detector, np.repeat(blob, batch, 0), threads, seconds=6)
        cpu_before, count_before = tree_cpu_seconds(server), counters(args.metrics_url)
        result = perf_analyzer(contract.DETECT, args.grpc_url, 1, args.interval_ms, data, batch)
        cpu_after, count_after = tree_cpu_seconds(server), counters(args.metrics_url)
        key = ("nv_inference_count", contract.DETECT)
        images = count_after[key] - count_before.get(key, 0)
        image = grpcclient.InferInput("image", [batch, *canvas.shape], "UINT8")
        image.set_data_from_numpy(np.repeat(canvas[None], batch, 0))
        answer = client.infer(contract.DETECT, [image]).get_response().ByteSize() / batch
        triton_cpu = (cpu_after - cpu_before) / images * 1000
        rows.append((batch, ort_cpu, ort_wall, triton_cpu, 1000 / result["throughput"], answer))
        print(
            f"face_detect batch {batch}: ONNX Runtime {ort_cpu:.1f} ms CPU per image "
            f"({ort_wall:.1f} wall), Triton {triton_cpu:.1f} ms CPU, x{triton_cpu / ort_cpu:.2f}; "
            f"answer {answer:.0f} bytes per image",
            flush=True,
        )
    return rows


def model_rows(args, model: str, levels: list[int], client, canvas: np.ndarray, scratch: Path) -> list[tuple]:
    """perf_analyzer on one model at each concurrency, with the batch size its batcher formed."""
    batched = main_model(args.repository, model)
    data = input_data(args.repository, model, client, canvas, scratch)
    rows = []
    for concurrency in levels:
        before = counters(args.metrics_url)
        shapes = image_shapes(args.repository, model, canvas)
        result = perf_analyzer(model, args.grpc_url, concurrency, args.interval_ms, data, shapes=shapes)
        after = counters(args.metrics_url)
        count, executions = (
            after[(name, batched)] - before.get((name, batched), 0)
            for name in ("nv_inference_count", "nv_inference_exec_count")
        )
        result["batch"] = count / max(executions, 1)
        rows.append((model, batched, concurrency, result))
        print(
            f"{model:22} c={concurrency}  {result['throughput']:8.1f}/s  p50 {result['p50_ms']:7.1f} ms  "
            f"p99 {result['p99_ms']:7.1f} ms  avg batch {result['batch']:.2f} ({batched})",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--grpc-url", default=f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', 8001)}")
    parser.add_argument(
        "--metrics-url", default=f"http://127.0.0.1:{os.environ.get('TRITON_METRICS_PORT', 8002)}/metrics"
    )
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--models", help="comma-separated; default: every model and ensemble")
    parser.add_argument("--interval-ms", type=int, default=2000)
    parser.add_argument(
        "--detection-batches",
        default="1,4",
        help="batch sizes of the face_detect cost comparison; empty: none",
    )
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    parser.add_argument(
        "--command", default="scripts/bench_models.sh", help="the command recorded in the report"
    )
    args = parser.parse_args()

    names = sorted(p.name for p in args.repository.iterdir() if (p / "config.pbtxt").is_file())
    ensembles = [n for n in names if n.startswith("face_")]
    models = args.models.split(",") if args.models else ensembles + [n for n in names if n not in ensembles]
    levels = [int(c) for c in args.concurrency.split(",")]
    batches = [int(b) for b in args.detection_batches.split(",") if b]
    client = grpcclient.InferenceServerClient(args.grpc_url)
    canvas = photo_canvas()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        rows = [row for m in models for row in model_rows(args, m, levels, client, canvas, Path(scratch))]
        data = input_data(args.repository, contract.DETECT, client, canvas, Path(scratch))
        costs = detection_costs(args, client, canvas, data, batches)
    load_after = os.getloadavg()[0]

    stamp = read_stamp(args.repository) or {}
    kind = "contract twins with the real SCRFD detector" if stamp.get("twins") else "the manifest's models"
    lines = [
        measured_on(),
        "",
        f"Command: `{args.command}`",
        "",
        "Triton 2.51 (nvidia-pytriton 0.7.0) serving the CPU rendering (python-based",
        f"`onnxruntime_python` backend, each ensemble fused into one model) of a repository holding {kind}.",
        "perf_analyzer over gRPC, one model at a time, random inputs (the detector's models, which take",
        "any size, at 640x640 with `--shape`) except for the models with optional",
        "threshold inputs (`face_detect`: InsightFace's `t1` photo letterboxed; `detector_postprocess`:",
        "the detector's raw outputs for it). *Avg batch* is the batch size the server's dynamic batcher",
        "formed for the model (for an ensemble that is not fused: its main model), from Triton's",
        "`nv_inference_count / nv_inference_exec_count` during the run.",
        f"The machine's load average was {load_before:.1f} before the run and {load_after:.1f} after it.",
        "",
        "| model | concurrency | infer/s | p50 ms | p99 ms | avg batch (model) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for model, batched, concurrency, r in rows:
        lines.append(
            f"| {model} | {concurrency} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['batch']:.2f} ({batched}) |"
        )
    if costs:
        lines += [
            "",
            "What `face_detect` costs Triton against the same detector file in ONNX Runtime alone, per",
            "640x640 image at the same batch: ONNX Runtime in this process with the CPU rendering's",
            "threading (all cores for the one instance, no spinning) on the photo's normalised tensor;",
            "Triton under perf_analyzer at concurrency 1 with batch-B requests of the photo (uint8 in,",
            "pre-processing, detector, decoding and NMS, faces out over gRPC): CPU seconds of the server's",
            "processes over the images it served. *Bytes*: face_detect's gRPC response per image.",
            "",
            "| batch | ORT CPU ms | ORT wall ms | Triton CPU ms | Triton wall ms | CPU ratio | bytes |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for batch, ort_cpu, ort_wall, triton_cpu, triton_wall, answer in costs:
            lines.append(
                f"| {batch} | {ort_cpu:.1f} | {ort_wall:.1f} | {triton_cpu:.1f} | {triton_wall:.1f} | "
                f"x{triton_cpu / ort_cpu:.2f} | {answer:.0f} |"
            )
    replace_section(args.output, "Model plane: perf_analyzer", "\n".join(lines))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
