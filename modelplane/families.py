"""Model families: what a swapper or enhancer file cannot say about itself, as FaceFusion publishes it.

A family fixes the crop size and the five-point alignment template, the input normalisation
(per-channel mean and standard deviation of RGB values in 0..1), how the output maps back to pixels,
and what the swapper's source input is. A file is checked against its declared family here, and
refusals name the role, the family, the tensor and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelplane import contract
from modelplane.errors import InterfaceError
from modelplane.tensors import FLOATS, Normalization, TensorSpec, describe

UNIT = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # values in 0..1
SIGNED = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # values in -1..1
IMAGENET = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# What the swapper's source input is, formed inside the model plane from an ArcFace embedding (raw or unit:
# only CONVERTER depends on its length, and takes the raw one as FaceFusion does).
EMAP = "emap"  # normalize(embedding @ emap), the matrix read from the file's last initializer
EMBEDDING = "embedding"  # the unit embedding itself
CONVERTER = "converter"  # the embedding through the family's converter model
CONVERTER_UNIT = "converter_unit"  # the same, scaled to unit length
IMAGE = "image"  # an aligned crop of the source face, RGB in 0..1
# Which face_embed output of a target face `swap_weight` mixes into the source vector (FaceFusion's
# balance_source_embedding): the raw one where the converter's output is used unscaled, else the unit one.
WEIGHT_TARGET_OF = {
    EMAP: contract.EMBEDDING,
    EMBEDDING: contract.EMBEDDING,
    CONVERTER: contract.RAW_EMBEDDING,
    CONVERTER_UNIT: contract.EMBEDDING,
}
EMBEDDING_DIM = 512


@dataclass(frozen=True)
class Family:
    name: str
    role: str  # swapper | enhancer
    size: int  # the square crop, pixels
    template: str  # the alignment template (orchestrator.faces.align.TEMPLATES)
    mean: tuple[float, float, float]  # RGB, of values in 0..1
    std: tuple[float, float, float]
    denormalize: bool  # whether the output is in the input's normalisation (else RGB in 0..1)
    source: str | None = None  # swapper: EMAP, EMBEDDING, CONVERTER, CONVERTER_UNIT or IMAGE
    source_template: str | None = None  # IMAGE source: its alignment
    source_size: int | None = None  # IMAGE source: its crop size
    weight: bool = False  # enhancer: a `weight` input (CodeFormer's fidelity)

    @property
    def input_norm(self) -> Normalization:
        """The input as `(pixel - mean) / std` of 0..255 pixels."""
        return Normalization(tuple(255 * m for m in self.mean), tuple(255 * s for s in self.std))

    @property
    def output_norm(self) -> Normalization:
        return self.input_norm if self.denormalize else Normalization(0.0, 255.0)

    def parameters(self, model: str, latent_model: str | None = None) -> contract.ServedParameters:
        """What a client needs to use the family's ensemble of `model`, as its config states it."""
        image = self.source == IMAGE
        return contract.ServedParameters(
            role=self.role,
            model=model,
            family=self.name,
            size=self.size,
            template=self.template,
            source=self.source,
            latent_model=latent_model,
            weight_target=WEIGHT_TARGET_OF.get(self.source),
            source_template=self.source_template if image else None,
            source_size=self.source_size if image else None,
        )


def _swapper(name, size, template, norm, denormalize, source, **extra) -> Family:
    return Family(name, "swapper", size, template, *norm, denormalize, source, **extra)


def _enhancer(name, size, template, **extra) -> Family:
    return Family(name, "enhancer", size, template, *SIGNED, True, **extra)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        _swapper("inswapper", 128, "arcface_128", UNIT, False, EMAP),
        _swapper("hyperswap", 256, "arcface_128", SIGNED, True, EMBEDDING),
        _swapper("ghost", 256, "arcface_112_v1", SIGNED, True, CONVERTER),
        _swapper("simswap", 256, "arcface_112_v1", IMAGENET, False, CONVERTER_UNIT),
        _swapper("simswap_unofficial", 512, "arcface_112_v1", UNIT, False, CONVERTER_UNIT),
        _swapper("hififace", 256, "mtcnn_512", SIGNED, True, CONVERTER_UNIT),
        _swapper(
            "blendswap",
            256,
            "ffhq_512",
            UNIT,
            False,
            IMAGE,
            source_template="arcface_112_v2",
            source_size=112,
        ),
        _swapper(
            "uniface", 256, "ffhq_512", SIGNED, True, IMAGE, source_template="ffhq_512", source_size=256
        ),
        _enhancer("gfpgan", 512, "ffhq_512"),
        _enhancer("codeformer", 512, "ffhq_512", weight=True),
        _enhancer("gpen_bfr_256", 256, "arcface_128"),
        _enhancer("gpen_bfr_512", 512, "ffhq_512"),
        _enhancer("gpen_bfr_1024", 1024, "ffhq_512"),
        _enhancer("gpen_bfr_2048", 2048, "ffhq_512"),
        _enhancer("restoreformer_plus_plus", 512, "ffhq_512"),
    )
}
CONVERTER_ROLE = "converter"  # the models of `prepare_repository` beside the roles: the converter file


def family_names(role: str) -> list[str]:
    return [name for name, family in FAMILIES.items() if family.role == role]


def get_family(role: str, name: str) -> Family:
    """The named family of `role`; InterfaceError names the known ones otherwise."""
    family = FAMILIES.get(name)
    if family is None or family.role != role:
        raise InterfaceError(f"{role}: unknown family {name!r} (known: {', '.join(family_names(role))})")
    return family


class FamilyChecker:
    """Refusals that name the role, the family, the tensor and the expectation."""

    def __init__(self, family: Family):
        self.family = family

    def fail(self, tensor: str, expected: str, got: str) -> InterfaceError:
        f = self.family
        return InterfaceError(f"{f.role}: family {f.name}: tensor {tensor!r}: expected {expected}, got {got}")

    def tensor(
        self, specs: list[TensorSpec], name: str, shape: tuple, what: str, dtypes=FLOATS
    ) -> TensorSpec:
        """The tensor `name` of `specs`, of a float type in `dtypes`, of `shape` (None: any size)."""
        spec = next((s for s in specs if s.name == name), None)
        expected = f"{what} float[{','.join('?' if d is None else str(d) for d in shape)}]"
        if spec is None:
            listed = ", ".join(f"{s.name} {describe(s)}" for s in specs) or "none"
            raise self.fail(name, expected, f"no such tensor ({listed})")
        fits = len(spec.shape) == len(shape) and all(
            e is None or d == e for d, e in zip(spec.shape, shape, strict=True)
        )
        if spec.dtype not in dtypes or not fits:
            raise self.fail(name, expected, describe(spec))
        return spec
