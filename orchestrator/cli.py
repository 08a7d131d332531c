"""`python -m orchestrator swap|serve ...`: the command line.

Exit status 0 on success; on an error, one `error: ...` line on stderr and status 1 (2 for bad
arguments, 130 when interrupted). Warnings (a target without faces, say) go to stderr too.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from orchestrator.faces.select import ORDERS, SELECTORS
from orchestrator.images import ImageError
from orchestrator.media import MediaError
from orchestrator.pipeline import (
    MASKS,
    FaceSwapper,
    Progress,
    SwapError,
    SwapOptions,
    VideoOptions,
    swap_image,
    swap_video,
    target_kind,
)
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient, TritonError


def _swap_parser(commands) -> None:
    defaults = SwapOptions()
    video = VideoOptions()
    swap = commands.add_parser(
        "swap", help="swap a source identity onto the faces of a target image or video"
    )
    swap.add_argument(
        "--source", nargs="+", type=Path, required=True, metavar="IMAGE", help="one or more photos"
    )
    swap.add_argument("--target", type=Path, required=True, metavar="IMAGE|VIDEO")
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
        "--reference-frame", type=int, metavar="N", help="video: take the reference face from frame N"
    )
    swap.add_argument("--start", type=float, metavar="SECONDS", help="video: start of the part to process")
    swap.add_argument("--end", type=float, metavar="SECONDS", help="video: end of the part to process")
    swap.add_argument(
        "--video-codec", choices=["libx264", "libx265", "libvpx-vp9", "h264_nvenc"], help="video encoder"
    )
    swap.add_argument("--crf", type=int, default=video.crf, help="video quality (lower is better)")
    swap.add_argument("--preset", default=video.preset, help="encoder speed preset")
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
    for path in (*args.source, args.target, *([args.reference] if args.reference else [])):
        if not path.is_file():
            raise SwapError(f"{path}: no such file")
    triton = TritonClient(
        args.triton_url or settings.triton_url,
        timeout=settings.triton_timeout,
        retries=settings.triton_retries,
    )
    swapper = FaceSwapper(triton, options)
    try:
        if target_kind(args.target) == "image":
            report = swap_image(swapper, args.source, args.target, args.output, args.reference)
        else:
            video = VideoOptions(
                codec=args.video_codec,
                crf=args.crf,
                preset=args.preset,
                start=args.start,
                end=args.end,
                reference_frame=args.reference_frame,
            )
            bars: list[tqdm] = []

            def show(progress: Progress) -> None:
                if not bars:  # created on the first frames, so errors before them print no bar
                    bars.append(tqdm(total=progress.total, unit="frame", desc=args.target.name, disable=None))
                bars[0].total = progress.total
                bars[0].update(progress.done - bars[0].n)

            try:
                report = swap_video(
                    swapper,
                    args.source,
                    args.target,
                    args.output,
                    reference=args.reference,
                    video=video,
                    progress=show,
                )
            finally:
                for bar in bars:
                    bar.close()
    finally:
        triton.close()
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    frames = f" in {report.frames} frames" if report.frames > 1 else ""
    print(f"{args.output}: swapped {report.swapped} of {report.faces} faces{frames}")
    return 0


def _serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="run the HTTP service (settings: FACESWAP_* variables)")
    serve.add_argument("--host", help="listen address (default: $FACESWAP_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: $FACESWAP_PORT or 8080)")
    serve.add_argument("--triton-url", help="Triton gRPC HOST:PORT (default: $FACESWAP_TRITON_URL)")
    serve.add_argument("--data-dir", type=Path, help="jobs and media (default: $FACESWAP_DATA_DIR or ./data)")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.api import create_app

    given = {"host": args.host, "port": args.port, "triton_url": args.triton_url, "data_dir": args.data_dir}
    settings = Settings(**{key: value for key, value in given.items() if value is not None})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        log_config=None,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator", description="Face swapping served by Triton."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _swap_parser(commands)
    _serve_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _swap(args, Settings())
    except (SwapError, ImageError, MediaError, TritonError, OSError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
