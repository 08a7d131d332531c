"""The model manifest: the default model of each role, its URL and its checksum."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from modelplane.errors import InterfaceError, ManifestError
from modelplane.families import CONVERTER, CONVERTER_ROLE, CONVERTER_UNIT, get_family
from modelplane.roles import BY_NAME, COMPANIONS, FAMILY_ROLES, OPTIONAL_ROLES, REQUIRED_ROLES

DEFAULT_MANIFEST = Path(__file__).with_name("models.toml")


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model file."""

    name: str
    role: str
    file: str
    url: str
    sha256: str | None = None
    crc32_url: str | None = None
    licence: str = ""
    family: str | None = None  # swappers and enhancers: modelplane.families (default inswapper, gfpgan)
    converter: str | None = None  # swappers whose family needs one: the converter model's name


@dataclass(frozen=True)
class Manifest:
    roles: dict[str, str]
    models: dict[str, ModelEntry]

    def for_role(self, role: str, name: str | None = None) -> ModelEntry:
        """The entry that fills `role`: the named one, or the manifest's default."""
        name = name or self.roles[role]
        entry = self.models.get(name)
        if entry is None:
            known = ", ".join(sorted(n for n, e in self.models.items() if e.role == role))
            raise ManifestError(f"no model named {name!r} in the manifest (models for {role}: {known})")
        if entry.role != role:
            raise ManifestError(f"model {name!r} is a {entry.role}, not a {role}")
        return entry


def load_manifest(path: Path = DEFAULT_MANIFEST) -> Manifest:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ManifestError(f"cannot read manifest {path}: {error}") from error
    models = {}
    for name, fields in data.get("models", {}).items():
        try:
            entry = ModelEntry(name=name, **fields)
        except TypeError as error:
            raise ManifestError(f"manifest {path}: model {name!r}: {error}") from error
        if entry.role not in (*BY_NAME, *COMPANIONS):
            raise ManifestError(f"manifest {path}: model {name!r} has unknown role {entry.role!r}")
        if not (entry.sha256 or entry.crc32_url):
            raise ManifestError(f"manifest {path}: model {name!r} has neither sha256 nor crc32_url")
        _check_family(path, entry)
        models[name] = entry
    roles = data.get("roles", {}) | data.get("mask_roles", {})
    manifest = Manifest(roles=roles, models=models)
    for role in REQUIRED_ROLES:
        if role not in roles:
            raise ManifestError(f"manifest {path}: no default model for role {role!r}")
        manifest.for_role(role)
    for entry in models.values():
        if entry.converter is not None:
            manifest.for_role(CONVERTER_ROLE, entry.converter)
    for role in OPTIONAL_ROLES:  # a default is checked when given
        if role in roles:
            manifest.for_role(role)
    return manifest


def _check_family(path: Path, entry: ModelEntry) -> None:
    """A swapper's or enhancer's family is one of its role (none: the role's first, inswapper or
    gfpgan); a family with a converter names it."""
    if entry.role not in FAMILY_ROLES or entry.family is None:
        return
    try:
        family = get_family(entry.role, entry.family)
    except InterfaceError as error:
        raise ManifestError(f"manifest {path}: model {entry.name!r}: {error}") from error
    if family.source in (CONVERTER, CONVERTER_UNIT) and entry.converter is None:
        raise ManifestError(
            f"manifest {path}: model {entry.name!r} (family {family.name}) names no converter"
        )
