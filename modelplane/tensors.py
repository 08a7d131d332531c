"""Tensors as the model plane reads them from ONNX files, and the checks every role's contract uses.

A refusal names the role, the tensor and what was expected (`fail`), so a file that does not fit its
role says why in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from modelplane.errors import InterfaceError

UINT8 = np.dtype(np.uint8)
FLOAT32 = np.dtype(np.float32)
FLOATS = (np.dtype(np.float32), np.dtype(np.float16))
# SCRFD exports: outputs per stride for scores, boxes and (optionally) 5 landmarks.
SCRFD_LAYOUTS = {  # number of outputs -> (strides, anchors per cell, has landmarks)
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


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
    """One raw output of a detector: its tensor, kind (scores | boxes | landmarks) and stride."""

    spec: TensorSpec
    kind: str
    stride: int

    @property
    def ensemble_name(self) -> str:
        return f"{self.kind}_{self.stride}"


def batched(name: str, dtype, shape) -> TensorSpec:
    """A tensor with a dynamic batch axis before `shape`."""
    return TensorSpec(name, np.dtype(dtype), (None, *shape))


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


def fail(role: str, tensor: str, expected: str, got: str) -> InterfaceError:
    return InterfaceError(f"{role}: tensor {tensor!r}: expected {expected}, got {got}")


def describe(spec: TensorSpec) -> str:
    dims = ",".join("?" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype.name}[{dims}]"


def check_float(role: str, spec: TensorSpec) -> None:
    if spec.dtype not in FLOATS:
        raise fail(role, spec.name, "a float32 or float16 tensor", describe(spec))


def check_image(role: str, spec: TensorSpec, square: int | None = None) -> None:
    """A [batch, 3, H, W] float tensor; `square` demands H == W == square when given."""
    check_float(role, spec)
    if spec.rank != 4 or spec.shape[1] != 3:
        raise fail(role, spec.name, "an image tensor [batch,3,H,W]", describe(spec))
    if square is not None and spec.shape[2:] != (square, square):
        raise fail(role, spec.name, f"an image tensor [batch,3,{square},{square}]", describe(spec))


def single(role: str, specs: list[TensorSpec], what: str) -> TensorSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs) or "none"
        raise InterfaceError(f"{role}: expected exactly one {what}, got {len(specs)} ({names})")
    return specs[0]


def square_side(role: str, spec: TensorSpec, axes: tuple[int, int], expected: str) -> int:
    """The side of a square image axis pair; refused when the sides differ or are dynamic."""
    height, width = (spec.shape[a] for a in axes)
    if height is None or height != width:
        raise fail(role, spec.name, expected, describe(spec))
    return height


def image_size(role: str, spec: TensorSpec) -> int:
    """S of a fixed square image input [batch,3,S,S]."""
    return square_side(role, spec, (2, 3), "a fixed square image size [batch,3,S,S]")


def image_inputs(spec: TensorSpec, size: tuple[int, int], norm: Normalization, batch: int, rng) -> np.ndarray:
    """Random pixels as the image input `spec` takes them, at `size`, for verifying a batch axis."""
    pixels = rng.uniform(0, 255, (batch, 3, *size))
    mean, std = norm.planes()
    return ((pixels - mean) / std).astype(spec.dtype)
