"""Which family a swapper or enhancer is prepared as, and where a converter family's converter is.

A family is the `--swapper-family` / `--enhancer-family` flag when given, else the manifest's word on
the chosen (or last fetched) model, else the role's first family (inswapper, gfpgan).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelplane import fetch
from modelplane.families import (
    CONVERTER,
    CONVERTER_ROLE,
    CONVERTER_UNIT,
    FAMILY_ROLES,
    family_names,
    get_family,
)
from modelplane.manifest import ModelEntry, load_manifest
from modelplane.prepare import Options


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    for role in FAMILY_ROLES:
        parser.add_argument(
            f"--{role}-family",
            metavar="FAMILY",
            help=f"the {role}'s family when the manifest does not say: {', '.join(family_names(role))}",
        )
    parser.add_argument(
        "--converter",
        metavar="MODEL|URL|PATH",
        help="the converter model of a ghost, simswap or hififace swapper (default: the manifest's)",
    )


def fetched_models(models_dir: Path) -> dict:
    """The models directory's lock file: role -> what was fetched ({} when there is none)."""
    try:
        return json.loads((Path(models_dir) / fetch.LOCK_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _chosen_entry(args: argparse.Namespace, role: str) -> ModelEntry | None:
    """The manifest entry of the model chosen for `role`: named on the command line, else fetched."""
    if args.twins:
        return None
    manifest = load_manifest(args.manifest)
    name = getattr(args, role) or fetched_models(args.models_dir).get(role, {}).get("model")
    entry = manifest.models.get(name) if name else manifest.models.get(manifest.roles.get(role))
    return entry if entry is not None and entry.role == role else None


def families_for(args: argparse.Namespace) -> dict[str, str]:
    """role -> family name, checked (InterfaceError names the known families)."""
    defaults = Options()
    found = {}
    for role in FAMILY_ROLES:
        flag = getattr(args, f"{role}_family")
        entry = None if flag else _chosen_entry(args, role)
        name = flag or (entry.family if entry else None) or getattr(defaults, f"{role}_family")
        found[role] = get_family(role, name).name
    return found


def converter_file(args: argparse.Namespace, fetch_missing: bool) -> dict[str, Path]:
    """{"converter": file} when the swapper's family needs one and it is given, fetched or fetchable."""
    family = get_family("swapper", families_for(args)["swapper"])
    if family.source not in (CONVERTER, CONVERTER_UNIT):
        return {}
    entry = _chosen_entry(args, "swapper")
    choice = args.converter or (entry.converter if entry else None)
    if choice and Path(choice).is_file():
        return {CONVERTER_ROLE: Path(choice)}
    fetched = fetched_models(args.models_dir).get(CONVERTER_ROLE)
    if fetched and (choice is None or fetched.get("model") == choice):
        return {CONVERTER_ROLE: Path(args.models_dir) / fetched["file"]}
    if choice and fetch_missing:
        manifest = load_manifest(args.manifest)
        return fetch.fetch_models(
            manifest, args.models_dir, choices={CONVERTER_ROLE: choice}, roles=(CONVERTER_ROLE,)
        )
    return {}  # preparation then names the missing converter
