#!/usr/bin/env python3
"""perf_analyzer against every model and ensemble of a running Triton; writes docs/benchmarks.md.

For each model and concurrency it records throughput, p50/p99 latency and the average batch the
server formed (from Triton's own counters: inferences / executions of the model, or of an
ensemble's main model, during the run). Run it through scripts/bench_models.sh, which starts the
local server first.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelplane.configs import from_text  # noqa: E402
from modelplane.prepare import read_stamp  # noqa: E402
from scripts.benchmarks_doc import measured_on, replace_section  # noqa: E402

ENV = ROOT / ".triton-env"
PERF_ANALYZER = ENV / "bin" / "perf_analyzer"
COUNTER = re.compile(
    r'^(nv_inference_count|nv_inference_exec_count)\{model="([^"]+)",version="\d+"\} (\d+)', re.M
)


def counters(metrics_url: str) -> dict[tuple[str, str], int]:
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    return {(name, model): int(value) for name, model, value in COUNTER.findall(text)}


def main_model(repository: Path, model: str) -> str:
    """The model whose batches matter: the model itself, or an ensemble's non pre/post step."""
    config = from_text((repository / model / "config.pbtxt").read_text())
    steps = [s.model_name for s in config.ensemble_scheduling.step]
    core = [s for s in steps if not s.endswith(("_preprocess", "_postprocess"))]
    return core[0] if core else model


def perf_analyzer(model: str, grpc_url: str, concurrency: int, interval_ms: int) -> dict[str, float]:
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
            "-f",
            str(report),
        ]
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
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--command", default="scripts/bench_models.sh", help="the command recorded in the report"
    )
    args = parser.parse_args()

    names = sorted(p.name for p in args.repository.iterdir() if (p / "config.pbtxt").is_file())
    ensembles = [n for n in names if n.startswith("face_")]
    models = args.models.split(",") if args.models else ensembles + [n for n in names if n not in ensembles]
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for model in models:
        batched = main_model(args.repository, model)
        for concurrency in levels:
            before = counters(args.metrics_url)
            result = perf_analyzer(model, args.grpc_url, concurrency, args.interval_ms)
            after = counters(args.metrics_url)
            inferences = after[("nv_inference_count", batched)] - before.get(
                ("nv_inference_count", batched), 0
            )
            executions = after[("nv_inference_exec_count", batched)] - before.get(
                ("nv_inference_exec_count", batched), 0
            )
            result["batch"] = inferences / max(executions, 1)
            rows.append((model, batched, concurrency, result))
            print(
                f"{model:22} c={concurrency}  {result['throughput']:8.1f}/s  p50 {result['p50_ms']:7.1f} ms  "
                f"p99 {result['p99_ms']:7.1f} ms  avg batch {result['batch']:.2f} ({batched})",
                flush=True,
            )

    stamp = read_stamp(args.repository) or {}
    kind = "contract twins with the real SCRFD detector" if stamp.get("twins") else "the manifest's models"
    lines = [
        measured_on(),
        "",
        "Triton 2.51 (nvidia-pytriton 0.7.0) serving the CPU rendering (python-based",
        f"`onnxruntime_python` backend) of a repository holding {kind}.",
        "perf_analyzer over gRPC, random inputs, one model at a time. *Avg batch* is the batch size the",
        "server's dynamic batcher formed for the model (for an ensemble: its main model), from Triton's",
        "`nv_inference_count / nv_inference_exec_count` during the run.",
        "",
        f"Command: `{args.command}`",
        "",
        "| model | concurrency | infer/s | p50 ms | p99 ms | avg batch (model) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for model, batched, concurrency, r in rows:
        lines.append(
            f"| {model} | {concurrency} | {r['throughput']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['batch']:.2f} ({batched}) |"
        )
    replace_section(args.output, "Model plane: perf_analyzer", "\n".join(lines))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
