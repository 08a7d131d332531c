"""`python -m orchestrator swap ...`: the command line.

Exit status 0 on success; on an error, one `error: ...` line on stderr and status 1 (2 for bad
arguments, 130 when interrupted). Warnings (a target without faces, say) go to stderr too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.faces.select import ORDERS, SELECTORS
from orchestrator.images import ImageError
from orchestrator.pipeline import MASKS, FaceSwapper, SwapError, SwapOptions, swap_image
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient, TritonError


def _swap_parser(commands) -> None:
    defaults = SwapOptions()
    swap = commands.add_parser("swap", help="swap a source identity onto the faces of a target image")
    swap.add_argument(
        "--source", nargs="+", type=Path, required=True, metavar="IMAGE", help="one or more photos"
    )
    swap.add_argument("--target", type=Path, required=True, metavar="IMAGE")
    swap.add_argument("--output", type=Path, required=True, metavar="PATH", help="format from the extension")
    swap.add_argument("--selector", choices=SELECTORS, default=defaults.selector)
    swap.add_argument("--face-order", choices=ORDERS, default=defaults.order, help="for --selector one")
    swap.add_argument("--face-index", type=int, default=defaults.index, help="position in --face-order")
    swap.add_argument(
        "--reference", type=Path, metavar="IMAGE", help="reference face for --selector reference"
    )
    swap.add_argument("--reference-distance", type=float, default=defaults.reference_distance)
    swap.add_argument("--mask", choices=MASKS, default=defaults.mask, help="paste-back mask")
    swap.add_argument("--mask-blur", type=float, default=defaults.mask_blur)
    swap.add_argument("--enhance", action="store_true", help="run the face enhancer after swapping")
    swap.add_argument("--enhance-blend", type=int, default=defaults.enhance_blend, metavar="0-100")
    swap.add_argument("--score-threshold", type=float, default=defaults.score_threshold)
    swap.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    swap.add_argument(
        "--triton-url", help="Triton gRPC HOST:PORT (default: $FACESWAP_TRITON_URL or localhost:8001)"
    )


def _swap(args: argparse.Namespace, settings: Settings) -> int:
    options = SwapOptions(
        selector=args.selector,
        order=args.face_order,
        index=args.face_index,
        reference_distance=args.reference_distance,
        mask=args.mask,
        mask_blur=args.mask_blur,
        enhance=args.enhance,
        enhance_blend=args.enhance_blend,
        score_threshold=args.score_threshold,
        jpeg_quality=args.jpeg_quality,
        max_pixels=settings.max_image_pixels,
    )
    triton = TritonClient(
        args.triton_url or settings.triton_url,
        timeout=settings.triton_timeout,
        retries=settings.triton_retries,
    )
    try:
        report = swap_image(
            FaceSwapper(triton, options), args.source, args.target, args.output, args.reference
        )
    finally:
        triton.close()
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.output}: swapped {report.swapped} of {report.faces} faces")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator", description="Face swapping served by Triton."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _swap_parser(commands)
    args = parser.parse_args(argv)
    try:
        return _swap(args, Settings())
    except (SwapError, ImageError, TritonError, OSError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
