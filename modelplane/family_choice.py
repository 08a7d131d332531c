"""Which family a swapper or enhancer is prepared as, where a converter family's converter is, and
the more swappers and enhancers served beside the default ones.

A family is the `--swapper-family` / `--enhancer-family` flag when given, else the manifest's word on
the chosen (or last fetched) model, else the role's first family (inswapper, gfpgan). `--swapper A,B`
(and `--swapper-family F,G` at the same positions) serves A as `face_swap` and B beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelplane import fetch
from modelplane.errors import CommandError
from modelplane.families import (
    CONVERTER,
    CONVERTER_ROLE,
    CONVERTER_UNIT,
    family_names,
    get_family,
)
from modelplane.family_twins import write_family_twin
from modelplane.manifest import ModelEntry, load_manifest
from modelplane.prepare import Options
from modelplane.roles import FAMILY_ROLES
from modelplane.variants import Variant

MORE_MODELS = "more"  # the models directory's folder for the more swappers and enhancers, one each


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
        help="the converter of a ghost, simswap or hififace swapper (default: the manifest's); "
        "with several swappers, comma-separated at their positions",
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


Choice = tuple[str | None, str | None, str | None]  # a model, its family, its converter; None: not given


def split_choices(args: argparse.Namespace) -> dict[str, list[Choice]]:
    """Leave the first of `--swapper A,B`, `--swapper-family F,G` and `--converter C,D` (and the
    enhancer's) on `args`; return the rest per role, by position."""
    more = {}
    for role in FAMILY_ROLES:
        keys = (role, f"{role}_family", "converter" if role == "swapper" else None)
        lists = [(getattr(args, key) or "").split(",") if key else [""] for key in keys]
        count = max(map(len, lists))
        lists = [values + [""] * (count - len(values)) for values in lists]
        for key, values in zip(keys, lists, strict=True):
            if key:
                setattr(args, key, values[0] or None)
        more[role] = [tuple(v or None for v in row) for row in list(zip(*lists, strict=True))[1:]]
    return more


def variants_for(args: argparse.Namespace, more: dict[str, list[Choice]]) -> list[Variant]:
    """The more swappers and enhancers: family twins with --twins, else manifest models, URLs or
    files, each fetched (and verified) into its own folder of the models directory."""
    found = []
    for role, choices in more.items():
        for model, family, converter in choices:
            if args.twins:
                name = get_family(role, family or getattr(Options(), f"{role}_family")).name
                files = write_family_twin(Path(args.models_dir) / "twins", role, name)
                found.append(Variant(f"{name}_twin", role, name, files[role], files.get(CONVERTER_ROLE)))
                continue
            if model is None:
                raise CommandError(
                    f"--{role}-family {family}: name its model at the same position of --{role}"
                )
            found.append(_fetched_variant(args, role, (model, family, converter)))
    return found


def _fetched_variant(args: argparse.Namespace, role: str, choice: Choice) -> Variant:
    model, family, converter_choice = choice
    manifest = load_manifest(args.manifest)
    entry = manifest.models.get(model)
    entry = entry if entry is not None and entry.role == role else None
    name = get_family(role, family or (entry.family if entry else getattr(Options(), f"{role}_family"))).name
    title = entry.name if entry else Path(model).stem
    folder = Path(args.models_dir) / MORE_MODELS / title
    file = fetch.fetch_models(manifest, folder, choices={role: model}, roles=(role,), progress=False)[role]
    converter = None
    if get_family(role, name).source in (CONVERTER, CONVERTER_UNIT):
        converter_choice = converter_choice or (entry.converter if entry else None)
        if converter_choice is None:
            raise CommandError(
                f"{role} {model}: family {name} needs its converter (--converter at its position)"
            )
        converter = fetch.fetch_models(
            manifest,
            folder,
            choices={CONVERTER_ROLE: converter_choice},
            roles=(CONVERTER_ROLE,),
            progress=False,
        )[CONVERTER_ROLE]
    return Variant(title, role, name, file, converter)
