"""Role contracts: what interface a detector, recognizer, swapper or enhancer ONNX file must have.

Everything the repository needs (tensor names, sizes, value ranges, the swapper's emap) is read
from the file here, so another model for a role drops in without code changes. A file that does
not fit its role is refused with a message naming the role, the tensor and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from modelplane import ROLES
from modelplane.errors import InterfaceError

# SCRFD exports: outputs per stride for scores, boxes and (optionally) 5 landmarks.
SCRFD_LAYOUTS = {  # number of outputs -> (strides, anchors per cell, has landmarks)
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
DETECTION_KINDS = ("scores", "boxes", "landmarks")
DETECTION_WIDTHS = {"scores": 1, "boxes": 4, "landmarks": 10}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]  # None where the axis is dynamic

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Normalization:
    """An image tensor's values as `(pixel - mean) / std`, pixel in 0..255 RGB; one value, or one
    per RGB channel."""

    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    def planes(self) -> tuple[np.ndarray, np.ndarray]:
        """mean and std as float32 [C,1,1] (C 1 or 3), to broadcast over [B,3,H,W]."""
        return tuple(np.reshape(np.asarray(v, np.float32), (-1, 1, 1)) for v in (self.mean, self.std))


@dataclass(frozen=True)
class DetectorOutput:
    spec: TensorSpec
    kind: str  # scores | boxes | landmarks
    stride: int

    @property
    def ensemble_name(self) -> str:
        return f"{self.kind}_{self.stride}"


@dataclass(frozen=True)
class Interface:
    """A role model's interface as read from its file."""

    role: str
    image: TensorSpec  # the NCHW image input
    outputs: tuple[TensorSpec, ...]
    input_norm: Normalization
    output_norm: Normalization | None = None  # image outputs: how values map back to pixels
    latent: TensorSpec | None = None  # swapper: the source identity input
    emap: np.ndarray | None = field(default=None, repr=False)  # swapper: embedding -> latent map
    detections: tuple[DetectorOutput, ...] = ()  # detector: outputs by kind and stride
    anchors: int = 0  # detector: anchors per feature-map cell
    weight: TensorSpec | None = None  # enhancer: CodeFormer's fidelity weight [batch]
    any_size: bool = False  # detector: served at any H, W that are multiples of its largest stride

    @property
    def canvas(self) -> tuple[int | None, int | None]:
        """(height, width) the image input is served at: `size`, or (None, None) for any size."""
        return (None, None) if self.any_size else self.size

    @property
    def stride(self) -> int:
        """A detector's largest stride: what every served input side must be a multiple of."""
        return max(d.stride for d in self.detections)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image input (a detector's reference size, see `any_size`)."""
        return self.image.shape[2], self.image.shape[3]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(s for s in (self.image, self.latent, self.weight) if s is not None)


def graph_inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    initializers = {i.name for i in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim
    )
    return TensorSpec(value.name, onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type), shape)


def _fail(role: str, tensor: str, expected: str, got: str) -> InterfaceError:
    return InterfaceError(f"{role}: tensor {tensor!r}: expected {expected}, got {got}")


def _describe(spec: TensorSpec) -> str:
    dims = ",".join("?" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype.name}[{dims}]"


def _check_float(role: str, spec: TensorSpec) -> None:
    if spec.dtype not in (np.float32, np.float16):
        raise _fail(role, spec.name, "a float32 or float16 tensor", _describe(spec))


def _check_image(role: str, spec: TensorSpec, square: int | None = None) -> None:
    """A [batch, 3, H, W] float tensor; `square` demands H == W == square when given."""
    _check_float(role, spec)
    if spec.rank != 4 or spec.shape[1] != 3:
        raise _fail(role, spec.name, "an image tensor [batch,3,H,W]", _describe(spec))
    if square is not None and spec.shape[2:] != (square, square):
        raise _fail(role, spec.name, f"an image tensor [batch,3,{square},{square}]", _describe(spec))


def _single(role: str, specs: list[TensorSpec], what: str) -> TensorSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs) or "none"
        raise InterfaceError(f"{role}: expected exactly one {what}, got {len(specs)} ({names})")
    return specs[0]


def _image_size(role: str, spec: TensorSpec) -> int:
    height, width = spec.shape[2], spec.shape[3]
    if height is None or height != width:
        raise _fail(role, spec.name, "a fixed square image size [batch,3,S,S]", _describe(spec))
    return height


def _normalises_itself(model: onnx.ModelProto) -> bool:
    """InsightFace's test: MXNet-exported ArcFace graphs start with their own Sub and Mul."""
    names = [node.name for node in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul


def read_interface(role: str, model: onnx.ModelProto, detector_size: int = 640) -> Interface:
    """Check `model` against `role`'s contract and describe it; raises InterfaceError."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    return {
        "detector": _detector,
        "recognizer": _recognizer,
        "swapper": _swapper,
        "enhancer": _enhancer,
    }[role](model, inputs, outputs, detector_size)


def _detector(model, inputs, outputs, detector_size) -> Interface:
    role = "detector"
    image = _single(role, inputs, "input")
    _check_image(role, image)
    if image.shape[2] is None or image.shape[3] is None:  # dynamic size: fix it to the chosen size
        image = TensorSpec(image.name, image.dtype, (image.shape[0], 3, detector_size, detector_size))
    layout = SCRFD_LAYOUTS.get(len(outputs))
    if layout is None:
        raise InterfaceError(f"{role}: expected 6, 9, 10 or 15 SCRFD outputs, got {len(outputs)}")
    strides, anchors, has_landmarks = layout
    if not has_landmarks:
        raise InterfaceError(
            f"{role}: this SCRFD export has no 5-point landmarks ({len(outputs)} outputs); "
            "alignment needs them: use a *_kps export (9 or 15 outputs)"
        )
    height, width = image.shape[2], image.shape[3]
    detections = []
    for index, spec in enumerate(outputs):
        _check_float(role, spec)
        kind = DETECTION_KINDS[index // len(strides)]
        stride = strides[index % len(strides)]
        cells = (height // stride) * (width // stride) * anchors
        expected = f"[batch,{cells},{DETECTION_WIDTHS[kind]}] or [{cells},{DETECTION_WIDTHS[kind]}] ({kind})"
        if spec.rank not in (2, 3) or spec.shape[-1] != DETECTION_WIDTHS[kind]:
            raise _fail(role, spec.name, expected, _describe(spec))
        if spec.shape[-2] not in (None, cells):
            raise _fail(role, spec.name, expected, _describe(spec))
        detections.append(DetectorOutput(spec, kind, stride))
    return Interface(
        role=role,
        image=image,
        outputs=tuple(outputs),
        input_norm=Normalization(127.5, 128.0),
        detections=tuple(detections),
        anchors=anchors,
    )


def _recognizer(model, inputs, outputs, _detector_size) -> Interface:
    role = "recognizer"
    image = _single(role, inputs, "input")
    _check_image(role, image)
    _image_size(role, image)
    embedding = _single(role, outputs, "output")
    _check_float(role, embedding)
    if embedding.rank != 2 or embedding.shape[1] is None:
        raise _fail(role, embedding.name, "an embedding [batch,D]", _describe(embedding))
    norm = Normalization(0.0, 1.0) if _normalises_itself(model) else Normalization(127.5, 127.5)
    return Interface(role=role, image=image, outputs=(embedding,), input_norm=norm)


def _swapper(model, inputs, outputs, _detector_size) -> Interface:
    role = "swapper"
    if len(inputs) != 2:
        names = ", ".join(s.name for s in inputs)
        raise InterfaceError(
            f"{role}: expected two inputs (target image, source latent), got {len(inputs)} ({names})"
        )
    image = next((s for s in inputs if s.rank == 4), None)
    latent = next((s for s in inputs if s.rank == 2), None)
    if image is None or latent is None:
        got = ", ".join(f"{s.name} {_describe(s)}" for s in inputs)
        raise InterfaceError(
            f"{role}: expected a target image [batch,3,S,S] and a latent [batch,D], got {got}"
        )
    _check_image(role, image)
    size = _image_size(role, image)
    _check_float(role, latent)
    swapped = _single(role, outputs, "output")
    _check_image(role, swapped, square=size)
    if not model.graph.initializer:
        raise InterfaceError(f"{role}: no initializers; the emap must be the graph's last initializer")
    last = model.graph.initializer[-1]
    emap = numpy_helper.to_array(last)
    dim = latent.shape[1]
    if emap.ndim != 2 or emap.shape[0] != emap.shape[1] or dim not in (None, emap.shape[0]):
        raise _fail(role, last.name, f"the emap [{dim},{dim}] as the last initializer", str(list(emap.shape)))
    return Interface(
        role=role,
        image=image,
        latent=latent,
        outputs=(swapped,),
        input_norm=Normalization(0.0, 255.0),
        output_norm=Normalization(0.0, 255.0),
        emap=emap.astype(np.float32),
    )


def _enhancer(model, inputs, outputs, _detector_size) -> Interface:
    role = "enhancer"
    image = _single(role, inputs, "input")
    _check_image(role, image)
    size = _image_size(role, image)
    enhanced = _single(role, outputs, "output")
    _check_image(role, enhanced, square=size)
    norm = Normalization(127.5, 127.5)
    return Interface(role=role, image=image, outputs=(enhanced,), input_norm=norm, output_norm=norm)


def sample_inputs(interface: Interface, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in each tensor's working range, for verifying a model's batch axis."""
    rng = np.random.default_rng(seed)
    height, width = interface.size
    pixels = rng.uniform(0, 255, (batch, 3, height, width))
    mean, std = interface.input_norm.planes()
    feeds = {interface.image.name: ((pixels - mean) / std).astype(interface.image.dtype)}
    if interface.latent is not None and interface.latent.rank == 4:  # an aligned source image in 0..1
        source = rng.uniform(0, 1, (batch, *interface.latent.shape[1:]))
        feeds[interface.latent.name] = source.astype(interface.latent.dtype)
    elif interface.latent is not None:
        latent = rng.standard_normal((batch, interface.latent.shape[1]))
        latent /= np.linalg.norm(latent, axis=1, keepdims=True)
        feeds[interface.latent.name] = latent.astype(interface.latent.dtype)
    if interface.weight is not None:
        feeds[interface.weight.name] = rng.uniform(0, 1, batch).astype(interface.weight.dtype)
    return feeds
