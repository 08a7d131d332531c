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
from orchestrator.choices import accepted
from orchestrator.errors import FaceSwapError, InputError
from orchestrator.options import SwapOptions, VideoOptions, parse_options
from orchestrator.pipeline import Progress, swap_image, swap_video, target_kind
from orchestrator.plan import resolve_plan
from orchestrator.settings import Settings, load_settings
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient

# The help's groups, in order, and the group of each option field (a new field needs one: a test checks).
GROUPS = {
    "inputs": "what is swapped onto what",
    "face selection": "which faces of the target are swapped",
    "swapper": "the swapper and how it sees a face",
    "masks": "what part of the swapped face is pasted back",
    "enhancer": "the face enhancer, after the swap",
    "output": "the result file",
    "video": "video targets: the part processed, the encoder",
    "tracking": "video targets: faces followed across frames",
    "model server": "the Triton that runs the models",
}
OPTION_GROUPS = {
    **dict.fromkeys(
        ("selector", "face_order", "face_index", "reference_distance", "score_threshold", "detector_angles"),
        "face selection",
    ),
    **dict.fromkeys(("swapper", "pixel_boost", "swap_weight"), "swapper"),
    **dict.fromkeys(
        ("mask", "mask_blur", "mask_padding", "regions", "areas", "mouth_mask", "mouth_mask_size"), "masks"
    ),
    "mouth_mask_feather": "masks",
    **dict.fromkeys(("enhance", "enhance_blend", "enhancer", "enhance_weight"), "enhancer"),
    "jpeg_quality": "output",
    **dict.fromkeys(("reference_frame", "start", "end", "video_codec", "crf", "preset"), "video"),
    **dict.fromkeys(("tracking", "track_gap", "landmark_smoothing"), "tracking"),
}


class Parser(argparse.ArgumentParser):
    """A mistake is one line, with the way to the help, instead of the whole usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _add_option_flags(groups: dict[str, argparse._ArgumentGroup], model: type[BaseModel]) -> None:
    """One flag per option field, named after it (`face_order` -> `--face-order`), with its help and
    choices, in its group. Values are range-checked when the options are built, with the same message
    the API gives.
    """
    for name, field in model.model_fields.items():
        parser = groups[OPTION_GROUPS[name]]
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
        "swap",
        help="swap a source identity onto the faces of a target image or video",
        usage="%(prog)s (--source IMAGE [IMAGE ...] | --map REFERENCE=SOURCE ...) --target IMAGE|VIDEO "
        "--output PATH [options]",
        description=f"Swap a source identity onto the faces of a target image or video; {accepted(True)}.",
    )
    groups = {title: swap.add_argument_group(title, about) for title, about in GROUPS.items()}
    inputs = groups["inputs"]
    inputs.add_argument("--source", nargs="+", type=Path, metavar="IMAGE", help="one or more photos")
    inputs.add_argument(
        "--target",
        type=Path,
        required=True,
        metavar="IMAGE|VIDEO",
        help="the image or video whose faces are swapped",
    )
    groups["output"].add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="PATH",
        help="the result; an image's format from the extension (.jpg, .png, .webp), a video's container too",
    )
    groups["face selection"].add_argument(
        "--reference", type=Path, metavar="IMAGE", help="reference face for --selector reference"
    )
    inputs.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="REFERENCE=SOURCE",
        help="instead of --source: the faces like REFERENCE (a photo or a face id) get SOURCE's identity; "
        "repeat for each person (and for several sources of one person); other faces are left alone",
    )
    _add_option_flags(groups, SwapOptions)
    _add_option_flags(groups, VideoOptions)
    groups["model server"].add_argument(
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
    try:
        kind = target_kind(args.target, settings.max_image_pixels, settings.video_limits)
        plan = resolve_plan(triton, options)
        swapper = FaceSwapper(triton, plan=plan, max_pixels=settings.max_image_pixels)
        if kind == "image":
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
    from orchestrator.api.logs import redact_keys
    from orchestrator.api.protocol import HeaderDeadline

    settings = load_settings(
        host=args.host, port=args.port, triton_url=args.triton_url, data_dir=args.data_dir
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_keys()
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
    parser = Parser(prog="python -m orchestrator", description="Face swapping served by Triton.")
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
