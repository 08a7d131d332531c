"""`python -m orchestrator swap|serve ...`: the command line.

Exit status 0 on success; on an error, one `error: ...` line on stderr and status 1 (2 for bad
arguments, 130 when interrupted). Warnings (a target without faces, say) go to stderr too.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from tqdm import tqdm

from orchestrator import media
from orchestrator.casting import is_face_id, parse_map
from orchestrator.errors import FaceSwapError, InputError
from orchestrator.options import SwapOptions, VideoOptions, parse_options
from orchestrator.pipeline import FaceSwapper, Progress, swap_image, swap_video, target_kind
from orchestrator.settings import Settings, load_settings
from orchestrator.triton import TritonClient


def _add_option_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per option field, named after it (`face_order` -> `--face-order`), with its help and choices.

    Values are range-checked when the options are built, with the same message the API gives.
    """
    for name, field in model.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        shown = "" if field.default is None or field.default is False else f" (default: {field.default})"
        kind = field.annotation
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[X]: X
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=field.description + shown)
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            parser.add_argument(flag, choices=choices, type=type(choices[0]), help=field.description + shown)
        else:
            parser.add_argument(
                flag, type=kind, help=field.description + shown, metavar=kind.__name__.upper()
            )


def _given(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name) is not None}


def _swap_parser(commands) -> None:
    swap = commands.add_parser(
        "swap", help="swap a source identity onto the faces of a target image or video"
    )
    swap.add_argument("--source", nargs="+", type=Path, metavar="IMAGE", help="one or more photos")
    swap.add_argument("--target", type=Path, required=True, metavar="IMAGE|VIDEO")
    swap.add_argument("--output", type=Path, required=True, metavar="PATH", help="format from the extension")
    swap.add_argument(
        "--reference", type=Path, metavar="IMAGE", help="reference face for --selector reference"
    )
    swap.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="REFERENCE=SOURCE",
        help="instead of --source: the faces like REFERENCE (a photo or a face id) get SOURCE's identity; "
        "repeat for each person (and for several sources of one person); other faces are left alone",
    )
    _add_option_flags(swap, SwapOptions)
    _add_option_flags(swap, VideoOptions)
    swap.add_argument(
        "--triton-url",
        help="Triton gRPC HOST:PORT, several as A:P,B:P, or dns:///NAME:PORT (default: $FACESWAP_TRITON_URL "
        "or localhost:8001); requests are balanced over every address",
    )


def _swap(args: argparse.Namespace, settings: Settings) -> int:
    options = parse_options(SwapOptions, _given(args, SwapOptions))
    video = parse_options(VideoOptions, _given(args, VideoOptions))
    if bool(args.source) == bool(args.map):
        raise InputError("give the identity with either --source or --map REFERENCE=SOURCE")
    face_map = parse_map(args.map, Path)
    references = [Path(p.reference) for p in face_map if not is_face_id(p.reference)]
    sources = args.source or [path for person in face_map for path in person.sources]
    for path in (*sources, *references, args.target, *([args.reference] if args.reference else [])):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
    triton = TritonClient(
        args.triton_url or settings.triton_url,
        timeout=settings.triton_timeout,
        retries=settings.triton_retries,
    )
    swapper = FaceSwapper(triton, options, settings.max_image_pixels)
    try:
        if target_kind(args.target, settings.max_image_pixels, settings.video_limits) == "image":
            report = swap_image(swapper, sources, args.target, args.output, args.reference, face_map)
        else:
            bars: list[tqdm] = []

            def show(progress: Progress) -> None:
                if not bars:  # created on the first frames, so errors before them print no bar
                    bars.append(tqdm(total=progress.total, unit="frame", desc=args.target.name, disable=None))
                bars[0].total = progress.total
                bars[0].update(progress.done - bars[0].n)

            try:
                report = swap_video(
                    swapper,
                    sources,
                    args.target,
                    args.output,
                    reference=args.reference,
                    video=video,
                    progress=show,
                    face_map=face_map,
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
    serve.add_argument(
        "--port", type=int, help="listen port, 0: any free one (default: $FACESWAP_PORT or 8080)"
    )
    serve.add_argument(
        "--triton-url",
        help="Triton gRPC HOST:PORT, A:P,B:P or dns:///NAME:PORT (default: $FACESWAP_TRITON_URL)",
    )
    serve.add_argument("--data-dir", type=Path, help="jobs and media (default: $FACESWAP_DATA_DIR or ./data)")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.api import create_app
    from orchestrator.api.protocol import HeaderDeadline

    settings = load_settings(
        host=args.host, port=args.port, triton_url=args.triton_url, data_dir=args.data_dir
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # What the service writes (the database, uploads, results: people's faces) is its user's alone.
    os.umask(0o077)
    media.limit_probes(settings.probe_processes)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=functools.partial(HeaderDeadline, header_timeout=settings.header_timeout_seconds),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        log_config=None,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator", description="Face swapping served by Triton."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _swap_parser(commands)
    _serve_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _swap(args, load_settings())
    except FaceSwapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
