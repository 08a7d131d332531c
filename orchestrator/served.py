"""The swappers and enhancers the model plane serves, read from their ensembles' configurations.

The default of each role is the ensemble `face_swap` / `face_enhance`; more are served beside them as
`face_swap__<name>` / `face_enhance__<name>` (modelplane.variants). Each states its role, model
name, family, crop size, alignment template, source kind and swap_weight's target embedding as
config parameters (`modelplane.contract.ServedParameters`), so a request can name the one it wants
and `GET /v1/models` can list them.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelplane import contract
from orchestrator.errors import InputError
from orchestrator.triton import TritonClient

DEFAULT_ENSEMBLES = {"swapper": contract.SWAP, "enhancer": contract.ENHANCE}
ONE_OF_A_KIND = {"detector": contract.DETECT, "recognizer": contract.EMBED}  # served once, no family
READY = "READY"


@dataclass(frozen=True)
class ServedModel:
    ensemble: str  # the Triton model a request goes to
    role: str
    default: bool
    ready: bool
    model: str | None = None  # the model's own name (a manifest name or a file's stem)
    family: str | None = None
    size: int | None = None
    template: str | None = None  # None: a repository prepared before families; the client's default
    source: str | None = None  # swappers: emap, embedding, converter, converter_unit or image
    latent_model: str | None = None  # swappers with a source vector: the model that forms it
    weight_target: str | None = None  # the face_embed output swap_weight mixes in (None: no swap_weight)
    source_template: str | None = None  # image sources: how the source face is aligned, and its size
    source_size: int | None = None


def _role_of(name: str) -> str | None:
    for role, ensemble in DEFAULT_ENSEMBLES.items():
        if name == ensemble or name.startswith(ensemble + contract.VARIANT_SEPARATOR):
            return role
    return None


def describe(triton: TritonClient, ensemble: str, role: str, ready: bool = True) -> ServedModel:
    """What an ensemble's configuration says about it (only its name and role when it is not READY)."""
    default = ensemble == DEFAULT_ENSEMBLES[role]
    if not ready:
        return ServedModel(ensemble, role, default, ready)
    found = contract.ServedParameters.from_config(triton.model_parameters(ensemble))
    return ServedModel(
        ensemble,
        role,
        default,
        ready,
        model=found.model,
        family=found.family,
        size=found.size or triton.crop_size(ensemble),
        template=found.template,
        source=found.source,
        latent_model=found.latent_model or (contract.LATENT if role == "swapper" else None),
        weight_target=found.weight_target,
        source_template=found.source_template,
        source_size=found.source_size,
    )


def served_models(triton: TritonClient, everything: bool = False) -> list[ServedModel]:
    """Every swapper and enhancer in Triton's repository, defaults first, and with `everything` the
    detector and recognizer too; TritonError if Triton is unreachable."""
    index = triton.repository_index()
    found = [
        describe(triton, name, role, state == READY)
        for name, state in sorted(index.items())
        if (role := _role_of(name)) is not None
    ]
    if everything:
        for role, name in ONE_OF_A_KIND.items():
            ready = index.get(name) == READY
            size = None
            if ready:  # the detector's: the size frames are scaled to fit (its canvas may be cut)
                size = triton.detector_input.size[0] if role == "detector" else triton.crop_size(name)
            found.append(ServedModel(name, role, default=True, ready=ready, size=size))
    return sorted(found, key=lambda m: (m.role, not m.default, m.ensemble))


def choose(triton: TritonClient, role: str, name: str | None) -> ServedModel:
    """The served model of `role` a request names (by model name or ensemble), or the role's default;
    InputError naming the served ones otherwise."""
    if name is None:
        return describe(triton, DEFAULT_ENSEMBLES[role], role)
    candidates = [m for m in served_models(triton) if m.role == role]
    for model in candidates:
        if name in (model.model, model.ensemble):
            if not model.ready:
                raise InputError(f"{role} {name!r} is served but not ready")
            return model
    known = ", ".join(m.model or m.ensemble for m in candidates) or "none"
    raise InputError(f"no {role} named {name!r} is served (served: {known})")
