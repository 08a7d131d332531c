"""Faces per second of every swapper and enhancer family, served at once from one Triton.

Each family's contract twin (modelplane/family_twins.py, the family's exact interface and crop
size; cheap models, so this measures alignment, the family's pre/post-processing graphs, batching
and paste-back, not the real networks) is served beside the others; a swap of the six faces of
InsightFace's `t1` photo chooses it by name, as a request does.

    .venv/bin/python -m scripts.bench_families [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from insightface.data import get_image

from modelplane.__main__ import main as modelplane_main
from modelplane.local_server import running_server
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from scripts.benchmarks_doc import BENCHMARKS, measured_on, replace_section
from scripts.twin_stack import SHARED_DETECTOR, SOURCE_PHOTO

SWAPPERS = (
    "inswapper",
    "hyperswap",
    "ghost",
    "simswap",
    "simswap_unofficial",
    "hififace",
    "blendswap",
    "uniface",
)
ENHANCERS = (
    "gfpgan",
    "codeformer",
    "gpen_bfr_256",
    "gpen_bfr_512",
    "gpen_bfr_1024",
    "restoreformer_plus_plus",
)


def measure(repeats: int) -> tuple[list[tuple[str, str, float]], float, float]:
    """(role, family, faces per second) of each family, and the load average before and after."""
    photo = get_image("t1")  # 1280x886, six faces
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        arguments = ["prepare", "--twins", "--detector", str(SHARED_DETECTOR)]
        arguments += ["--repository", str(scratch / "repository"), "--models-dir", str(scratch / "models")]
        arguments += ["--swapper-family", ",".join(SWAPPERS), "--enhancer-family", ",".join(ENHANCERS)]
        if modelplane_main(arguments) != 0:
            raise SystemExit("the repository could not be prepared")
        with running_server(scratch / "repository", scratch / "triton") as server:
            client = TritonClient(server.grpc_url)
            faces = FaceSwapper(client).find_faces([photo])
            chosen = [("swapper", f, SwapOptions(swapper=f"{f}_twin")) for f in SWAPPERS]
            chosen += [("enhancer", f, SwapOptions(enhance=True, enhancer=f"{f}_twin")) for f in ENHANCERS]
            plain = FaceSwapper(client)
            plain_identity = plain.identity([SOURCE_PHOTO])
            for role, family, options in chosen:
                swapper = FaceSwapper(client, options)
                identity = swapper.identity([SOURCE_PHOTO])
                swapper.swap_frames([photo], faces, identity)  # warm up
                seconds, swap_only = [], []
                for _ in range(repeats):  # the enhancer's share: with it, less the swap alone, interleaved
                    start = time.perf_counter()
                    swapper.swap_frames([photo], faces, identity)
                    seconds.append(time.perf_counter() - start)
                    if role == "enhancer":
                        start = time.perf_counter()
                        plain.swap_frames([photo], faces, plain_identity)
                        swap_only.append(time.perf_counter() - start)
                spent = statistics.median(seconds) - (statistics.median(swap_only) if swap_only else 0.0)
                rows.append((role, family, len(faces[0]) / max(spent, 1e-6)))
                print(f"{role} {family}: {rows[-1][2]:.1f} faces/s", flush=True)
            client.close()
    return rows, load_before, os.getloadavg()[0]


def report(rows, load_before: float, load_after: float, repeats: int) -> str:
    lines = [
        measured_on(),
        "",
        f"Command: `.venv/bin/python -m scripts.bench_families --repeats {repeats}`",
        "",
        "Every family's contract twin served at once (one local Triton, CPU rendering), chosen per",
        "swap by name; the six faces of InsightFace's t1 photo (1280x886) detected once. A swapper's",
        "figure covers alignment at its crop size and template, its pre/post-processing graphs and the",
        "paste-back; an enhancer's is its share of a swap-and-enhance (that less the swap alone).",
        "Twins are cheap, so this compares the orchestration per crop size, not the real networks.",
        f"The machine's load average was {load_before:.1f} before the run and {load_after:.1f} after it.",
        "",
        "| role | family | faces/s |",
        "| --- | --- | ---: |",
    ]
    lines += [f"| {role} | {family} | {rate:.1f} |" for role, family, rate in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    rows, before, after = measure(args.repeats)
    replace_section(args.output, "Swapper and enhancer families", report(rows, before, after, args.repeats))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
