"""Preparation: turn the role models into a Triton model repository.

Each role of the registry (`modelplane.roles`) whose file is given checks it against its contract,
gives it a dynamic batch axis, verifies it (batch-N equals N stacked batch-1 runs) and adds its model
directories and ensembles; here they are written with both configuration renderings, in a staging
folder moved into place only when every role passed. What each ensemble takes and gives is in its
role's module and in model_repository/README.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import onnx

from modelplane import configs
from modelplane.configs import Rendering
from modelplane.errors import PreparationError
from modelplane.registry import Built, Options
from modelplane.roles import BY_NAME, COMPANIONS, REGISTRY

STAMP = ".prepared.json"


def _renderings(options: Options, repository: Path) -> tuple[Rendering, Rendering]:
    """The GPU and CPU renderings; TensorRT engines are cached beside the repository, on its volume."""
    cache = str(repository.resolve().parent / "trt_cache")
    gpu = Rendering("", configs.GPU.backend, configs.GPU.kind, options.gpu_instances, options.tensorrt, cache)
    cpu = Rendering(configs.CPU.name, configs.CPU.backend, configs.CPU.kind, options.cpu_instances)
    return gpu, cpu


def _write_config(directory: Path, config, rendering: Rendering) -> None:
    path = (
        directory / "config.pbtxt"
        if not rendering.name
        else directory / "configs" / f"{rendering.name}.pbtxt"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(configs.to_text(config))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_digest() -> str:
    """SHA-256 of the model plane's code (graphs, configs, the roles, the backend...): a repository
    prepared by other code, an older release's, is prepared again rather than served with stale graphs."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stamp_for(models: dict[str, Path], options: Options, twins: bool = False) -> dict:
    """What a repository was prepared from: the sources' SHA-256, the options, twins or not, and the
    model plane's code."""
    return {
        "sources": {role: sha256_of(path) for role, path in sorted(models.items())},
        "options": json.loads(json.dumps(asdict(options), default=list)),
        "twins": twins,
        "code": code_digest(),
    }


def read_stamp(repository: Path) -> dict | None:
    """The stamp of a prepared repository, or None if it was never (completely) prepared."""
    try:
        return json.loads((repository / STAMP).read_text())
    except (OSError, ValueError):
        return None


def prepare_repository(
    models: dict[str, Path], repository: Path, options: Options = Options(), twins: bool = False
) -> list[str]:
    """Write the model repository for the given role files; returns the model names written.

    Models are built in a staging folder inside `repository` and moved into place only when every
    role passed, so a failed preparation leaves the previous repository as it was.
    """
    unknown = set(models) - set(BY_NAME) - set(COMPANIONS)
    if unknown:
        raise PreparationError(f"unknown roles: {', '.join(sorted(unknown))}")
    repository.mkdir(parents=True, exist_ok=True)
    stage = repository / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    built = Built()
    for role in REGISTRY:
        if role.name in models:
            added = role.prepare({name: Path(path) for name, path in models.items()}, options)
            built.entries += added.entries
            built.ensembles += added.ensembles
    entries, ensembles = built.entries, built.ensembles
    try:
        gpu, cpu = _renderings(options, repository)
        for rendering in (gpu, cpu):
            for entry in entries:
                config = configs.model_config(
                    entry.name,
                    entry.inputs,
                    entry.outputs,
                    entry.batching,
                    rendering,
                    entry.warmup,
                    entry.optional,
                    entry.tensorrt,
                    entry.warmup_dims,
                )
                _write_config(stage / entry.name, config, rendering)
        for ensemble in ensembles:
            _write_config(stage / ensemble.name, configs.ensemble_config(ensemble), gpu)
            _write_config(stage / ensemble.name, configs.fused_config(ensemble, cpu, options.warmup), cpu)
            (stage / ensemble.name / configs.VERSION).mkdir()
        for entry in entries:
            (stage / entry.name / configs.VERSION).mkdir(parents=True, exist_ok=True)
            onnx.save(entry.model, str(stage / entry.name / configs.VERSION / "model.onnx"))
        names = sorted(p.name for p in stage.iterdir())
        (repository / STAMP).unlink(missing_ok=True)
        for name in names:
            target = repository / name
            if target.exists():
                shutil.rmtree(target)
            (stage / name).rename(target)
        (repository / STAMP).write_text(json.dumps(stamp_for(models, options, twins), indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return names
