"""What the model plane serves and the orchestrator calls: ensemble names, their tensors, and the
config parameters an ensemble states about its model.

The one module both planes import (standard library only): the model plane writes these names and
parameters, the orchestrator and direct clients read them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# --- ensembles, by what they do (model_repository/README.md describes each one's tensors)
DETECT = "face_detect"  # image uint8 [B,H,W,3] -> boxes, scores, landmarks, count
DETECT_RAW = "face_detect_raw"  # image -> the detector's raw outputs per stride
EMBED = "face_embed"  # crop uint8 -> embedding (unit), raw_embedding
LATENT = "swap_latent"  # embedding -> latent, the swapper's source vector
SWAP = "face_swap"  # crop uint8 + latent | source crop -> swapped uint8
ENHANCE = "face_enhance"  # crop uint8 (+ weight) -> enhanced uint8
OCCLUSION = "face_occlusion"  # crop uint8 -> mask uint8
PARSE = "face_parse"  # crop uint8 -> classes uint8
LANDMARK = "face_landmark"  # crop uint8 -> landmarks float32 [B,68,2], scores

REQUIRED = (DETECT, EMBED, LATENT, SWAP)  # a repository serves these at least
VARIANT_SEPARATOR = "__"  # face_swap__<name>: another served model of the same role

# --- tensor names of the ensembles
CROP = "crop"  # every per-face ensemble's aligned uint8 BGR crop
IMAGE = "image"  # face_detect's letterboxed frame
SCORE_THRESHOLD = "score_threshold"
IOU_THRESHOLD = "iou_threshold"
DETECTIONS = ("boxes", "scores", "landmarks", "count")
EMBEDDING = "embedding"
RAW_EMBEDDING = "raw_embedding"
LATENT_VECTOR = "latent"  # the swapper's source vector, into face_swap and out of swap_latent
SOURCE_CROP = "source"  # the aligned source face of swappers whose source is an image
SWAPPED = "swapped"
ENHANCED = "enhanced"
WEIGHT = "weight"  # CodeFormer's fidelity
MASK = "mask"
CLASSES = "classes"
LANDMARKS = "landmarks"
WEIGHT_TARGETS = (EMBEDDING, RAW_EMBEDDING)  # the face_embed outputs swap_weight can mix into a latent


@dataclass(frozen=True)
class ServedParameters:
    """What a swapper's or enhancer's ensemble states about its model, as config parameters."""

    role: str | None = None
    model: str | None = None  # the model's own name (a manifest name or a file's stem)
    family: str | None = None
    size: int | None = None  # the square crop
    template: str | None = None  # the five-point alignment template
    source: str | None = None  # swappers: emap, embedding, converter, converter_unit or image
    latent_model: str | None = None  # swappers with a source vector: the model that forms it
    weight_target: str | None = None  # the face_embed output swap_weight mixes in
    source_template: str | None = None  # image sources: how the source face is aligned, and its size
    source_size: int | None = None

    def to_config(self) -> dict[str, str]:
        return {f.name: str(value) for f in fields(self) if (value := getattr(self, f.name)) is not None}

    @classmethod
    def from_config(cls, parameters: dict[str, str]) -> ServedParameters:
        """Read back from a config's parameters; unknown keys are ignored, integers parsed."""
        found = {}
        for f in fields(cls):
            value = parameters.get(f.name)
            if value:
                found[f.name] = int(value) if f.type == "int | None" else value
        return cls(**found)


@dataclass(frozen=True)
class DetectorParameters:
    """What face_detect's config states: the reference size frames fit in, the largest stride, and
    whether any canvas (a multiple of the stride) is taken."""

    width: int
    height: int
    stride: int
    any_size: bool

    def to_config(self) -> dict[str, str]:
        return {
            "detector_size": f"{self.width}x{self.height}",
            "stride": str(self.stride),
            "any_size": str(self.any_size).lower(),
        }

    @classmethod
    def from_config(cls, parameters: dict[str, str]) -> DetectorParameters:
        width, height = map(int, parameters["detector_size"].split("x"))
        return cls(width, height, int(parameters["stride"]), parameters.get("any_size") == "true")
