"""`python -m modelplane fetch|prepare|build|server`: the model plane's command line.

fetch     download and verify each role's model (see modelplane.fetch)
prepare   write the Triton model repository from fetched models, given files, or --twins
build     fetch, then prepare: one command from the manifest to a ready repository
server    start|stop|status a local Triton on loopback serving the CPU rendering
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from modelplane import fetch
from modelplane.errors import CommandError, ModelPlaneError
from modelplane.families import CONVERTER_ROLE
from modelplane.family_choice import (
    add_family_arguments,
    converter_file,
    families_for,
    fetched_models,
    split_choices,
    variants_for,
)
from modelplane.local_server import from_environment
from modelplane.manifest import DEFAULT_MANIFEST, load_manifest
from modelplane.prepare import STAMP, Options, code_digest, prepare_repository, read_stamp, stamp_for
from modelplane.roles import FAMILY_ROLES, OPTIONAL_ROLES, REGISTRY, REQUIRED_ROLES
from modelplane.variants import add_variants

TWIN_WARNING = (
    "WARNING: this repository holds CONTRACT TWINS, not real models: outputs have the right shapes "
    "but are NOT real face swaps or enhancements."
)


def _add_repository_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="default: %(default)s"
    )
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="default: %(default)s")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="the model manifest (build)")
    for role in REGISTRY:
        parser.add_argument(
            f"--{role.name}",
            metavar="MODEL|URL|PATH",
            help=f"{role.help}: a manifest model name, a URL or an ONNX file"
            + ("" if role.required else " (optional)"),
        )
    add_family_arguments(parser)
    parser.add_argument(
        "--twins",
        action="store_true",
        help="use contract twins for every role (the detector's unless --detector)",
    )
    parser.add_argument(
        "--from-environment",
        action="store_true",
        help="take each role's model from FACESWAP_<ROLE> (FACESWAP_SWAPPER, ...) and the families and "
        "converter from FACESWAP_SWAPPER_FAMILY, FACESWAP_ENHANCER_FAMILY, FACESWAP_CONVERTER, where set",
    )
    parser.add_argument("--detector-size", type=int, default=640, help="for detectors of dynamic input size")
    parser.add_argument("--tensorrt", action="store_true", help="TensorRT FP16 in the GPU rendering")
    parser.add_argument("--force", action="store_true", help="prepare even if the repository is up to date")


def _from_environment(args: argparse.Namespace) -> None:
    """Fill the choices not given on the command line from FACESWAP_<CHOICE> (the container's way)."""
    names = [role.name for role in REGISTRY] + [f"{role}_family" for role in FAMILY_ROLES] + [CONVERTER_ROLE]
    for name in names:
        value = os.environ.get(f"FACESWAP_{name.upper()}", "").strip()
        if value and getattr(args, name) is None:
            setattr(args, name, value)


def _fetched(models_dir: Path) -> dict[str, Path]:
    roles = (*REQUIRED_ROLES, CONVERTER_ROLE, *OPTIONAL_ROLES)
    return {
        role: models_dir / entry["file"]
        for role, entry in fetched_models(models_dir).items()
        if role in roles
    }


def _role_files(args: argparse.Namespace, fetch_missing: bool) -> dict[str, Path]:
    given = {role.name: getattr(args, role.name) for role in REGISTRY if getattr(args, role.name)}
    if args.twins:
        detector = given.get("detector")
        twins = args.models_dir / "twins"
        families = families_for(args)
        files = {}
        for role in REGISTRY:
            files |= role.twin(twins, families.get(role.name))
        if detector:
            files["detector"] = Path(detector)
        return files
    if fetch_missing:
        roles = REQUIRED_ROLES + tuple(
            role for role in OPTIONAL_ROLES if role in given or role in _fetched(args.models_dir)
        )
        files = fetch.fetch_models(load_manifest(args.manifest), args.models_dir, choices=given, roles=roles)
        return files | converter_file(args, fetch_missing=True)
    files = {**_fetched(args.models_dir), **{role: Path(value) for role, value in given.items()}}
    files |= converter_file(args, fetch_missing=False)
    missing = [role for role in REQUIRED_ROLES if role not in files]
    if missing:
        raise CommandError(
            f"no {', '.join(missing)} model in {args.models_dir}: run `python -m modelplane fetch`, "
            f"pass --{missing[0]} PATH, or use --twins"
        )
    return files


def _prepare(args: argparse.Namespace, fetch_missing: bool) -> None:
    more = split_choices(args)
    files = _role_files(args, fetch_missing)
    variants = variants_for(args, more)
    families = families_for(args)
    options = Options(
        detector_size=args.detector_size,
        tensorrt=args.tensorrt,
        swapper_family=families["swapper"],
        enhancer_family=families["enhancer"],
    )
    every = files | {f"{v.role}{v.suffix}/{role}": path for v in variants for role, path in v.files.items()}
    stamp = stamp_for(every, options, args.twins)
    if not args.force and read_stamp(args.repository) == stamp:
        print(f"{args.repository} is up to date")
    else:
        names = prepare_repository(files, args.repository, options, twins=args.twins)
        names += add_variants(args.repository, variants, options)
        (args.repository / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")  # the variants' too
        print(f"wrote {len(names)} models to {args.repository}: {', '.join(names)}")
    if args.twins:
        print(TWIN_WARNING, file=sys.stderr)


def _server(args: argparse.Namespace) -> None:
    server = from_environment(args.repository)
    if args.action == "stop":
        print("stopped" if server.stop() else "not running")
        return
    if args.action == "status":
        print(server.status())
        return
    stamp = read_stamp(args.repository)
    # missing, not the kind asked for, or prepared by another release's code
    if stamp is None or bool(stamp.get("twins")) != args.twins or stamp.get("code") != code_digest():
        print(f"preparing {args.repository} ...", file=sys.stderr)
        _prepare(args, fetch_missing=not args.twins and not _fetched(args.models_dir))
        server.stop()  # a running server would keep serving the models it loaded
    elif args.twins:
        print(TWIN_WARNING, file=sys.stderr)
    server.start()
    print(server.status())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelplane", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download and verify the models", add_help=False)
    _add_repository_arguments(commands.add_parser("prepare", help="write the model repository"))
    _add_repository_arguments(commands.add_parser("build", help="fetch, then prepare"))
    server = commands.add_parser("server", help="a local Triton serving the CPU rendering")
    server.add_argument("action", choices=["start", "stop", "status"])
    _add_repository_arguments(server)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fetch"]:
        return fetch.main(argv[1:])
    args = parser.parse_args(argv)
    if args.from_environment:
        _from_environment(args)
    try:
        if args.command == "server":
            _server(args)
        else:
            _prepare(args, fetch_missing=args.command == "build")
    except (ModelPlaneError, OSError) as error:  # OSError: the environment's (disks, permissions)
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
