"""More swappers and enhancers served beside the default ones, so a request can choose among them.

Each is prepared on its own, exactly as the default of its role, and its models are renamed with
the suffix `__<name>`: `face_swap__hyperswap_1a_256` with its `swap_latent__hyperswap_1a_256`, or
`face_enhance__codeformer`. Their ensembles carry the `model` name and family as config parameters
(`latent_model` names the renamed latent model), which is how clients find them; the default ones
keep the documented names `face_swap`, `swap_latent`, `face_enhance`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from modelplane import configs, contract
from modelplane.families import CONVERTER_ROLE
from modelplane.prepare import Options, prepare_repository

SEPARATOR = contract.VARIANT_SEPARATOR
CONFIG_FILES = ("config.pbtxt", f"configs/{configs.CPU_RENDERING}.pbtxt")


@dataclass(frozen=True)
class Variant:
    """One more swapper or enhancer: its name in requests, role, family and file(s)."""

    name: str
    role: str
    family: str
    file: Path
    converter: Path | None = None

    @property
    def suffix(self) -> str:
        return SEPARATOR + re.sub(r"[^A-Za-z0-9_-]", "_", self.name)

    @property
    def files(self) -> dict[str, Path]:
        """What it is prepared from, keyed as prepare_repository and its stamp take them."""
        found = {self.role: self.file}
        if self.converter is not None:
            found[CONVERTER_ROLE] = self.converter
        return found


def _renamed(config, rename: dict[str, str], model: str):
    """`config` under its new name, its ensemble steps and fused step files pointing at renamed models."""
    config.name = rename[config.name]
    for step in config.ensemble_scheduling.step:
        step.model_name = rename[step.model_name]
    if configs.ENSEMBLE_STEPS in config.parameters:
        steps = json.loads(config.parameters[configs.ENSEMBLE_STEPS].string_value)
        for step in steps:
            _, name, rest = step["model"].split("/", 2)
            step["model"] = f"../{rename[name]}/{rest}"
        config.parameters[configs.ENSEMBLE_STEPS].string_value = json.dumps(steps)
    if "latent_model" in config.parameters:
        config.parameters["latent_model"].string_value = rename[contract.LATENT]
    if "role" in config.parameters:
        config.parameters["model"].string_value = model
    return config


def add_variants(repository: Path, variants: list[Variant], options: Options) -> list[str]:
    """Prepare each variant and add its renamed models to `repository`; drop variants no longer asked
    for. Returns the model names written."""
    written = []
    for variant in variants:
        with tempfile.TemporaryDirectory(dir=repository, prefix=".variant") as stage:
            stage = Path(stage)
            prepared = replace(options, **{f"{variant.role}_family": variant.family})
            names = prepare_repository(variant.files, stage, prepared)
            rename = {name: name + variant.suffix for name in names}
            for name in names:
                for config_file in CONFIG_FILES:
                    path = stage / name / config_file
                    config = _renamed(configs.from_text(path.read_text()), rename, variant.name)
                    path.write_text(configs.to_text(config))
                target = repository / rename[name]
                shutil.rmtree(target, ignore_errors=True)
                (stage / name).rename(target)
            written += rename.values()
    for stale in repository.iterdir():
        if SEPARATOR in stale.name and stale.is_dir() and stale.name not in written:
            shutil.rmtree(stale)
    return written
