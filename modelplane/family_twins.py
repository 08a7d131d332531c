"""Contract twins of every swapper and enhancer family, each with its family's exact interface.

Swapper twin (`target` [1,3,S,S] in the family's normalisation, `source` [1,512] or the aligned
source crop [1,3,s,s] in 0..1 -> `output` [1,3,S,S]): the target's RGB in 0..1, half mixed with a
tint: sigmoid(source @ colours) for a source vector, the source crop's mean colour for a source
image; the result in the family's output normalisation. So in pixels, for every family,
swapped = 0.5 * crop + 0.5 * 255 * tint, and the tint depends on the whole source path.
inswapper twins keep an `emap` [512,512] as their last initializer.

Converter twin (`input` [1,512] -> `output` [1,512]): input @ matrix, a fixed random matrix
scaled so the result is not of unit length (the unit families must normalise it).

Enhancer twins (`input` [1,3,S,S] in -1..1 -> `output`): clip(gain * input, -1, 1), gain 1.25, or
for CodeFormer (`weight` [1], float64 as published) gain = 1 + weight.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelplane.families import (
    CONVERTER,
    CONVERTER_ROLE,
    CONVERTER_UNIT,
    EMAP,
    EMBEDDING_DIM,
    IMAGE,
    Family,
    get_family,
)
from modelplane.twins import _model, _tensor  # the twins' own builders: opset, IR version, checks

MIX = 0.5
ENHANCE_GAIN = 1.25
CONVERTER_SCALE = 3.0


def _planes(values) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(1, 3, 1, 1)


def swapper(family: Family) -> onnx.ModelProto:
    size = family.size
    rng = np.random.default_rng(size + len(family.name))
    node = helper.make_node
    nodes = [
        node("Mul", ["target", "std"], ["scaled"]),
        node("Add", ["scaled", "mean"], ["pixels"]),  # RGB in 0..1
        node("Mul", ["pixels", "mix"], ["kept"]),
    ]
    initializers = [_tensor("std", _planes(family.std)), _tensor("mean", _planes(family.mean))]
    initializers.append(_tensor("mix", np.float32(MIX)))
    if family.source == IMAGE:
        nodes.append(node("ReduceMean", ["source"], ["tint"], axes=[2, 3], keepdims=1))
        source_shape = [1, 3, family.source_size, family.source_size]
    else:
        colours = (rng.standard_normal((EMBEDDING_DIM, 3)) * 2.0).astype(np.float32)
        nodes += [
            node("MatMul", ["source", "colours"], ["logits"]),
            node("Sigmoid", ["logits"], ["tint_rgb"]),
            node("Reshape", ["tint_rgb", "tint_shape"], ["tint"]),
        ]
        initializers += [_tensor("colours", colours), _tensor("tint_shape", np.array([1, 3, 1, 1], np.int64))]
        source_shape = [1, EMBEDDING_DIM]
    nodes += [
        node("Mul", ["tint", "mix"], ["painted"]),
        node("Add", ["kept", "painted"], ["mixed"]),
    ]
    if family.denormalize:
        nodes += [node("Sub", ["mixed", "mean"], ["centred"]), node("Div", ["centred", "std"], ["output"])]
    else:
        nodes.append(node("Identity", ["mixed"], ["output"]))
    if family.source == EMAP:  # last, as in inswapper_128.onnx
        initializers.append(
            _tensor("emap", np.linalg.qr(rng.standard_normal((512, 512)))[0].astype(np.float32))
        )
    inputs = [
        helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, size, size]),
        helper.make_tensor_value_info("source", TensorProto.FLOAT, source_shape),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, outputs, initializers, f"{family.name}_twin")


def converter() -> onnx.ModelProto:
    matrix = np.random.default_rng(7).standard_normal((EMBEDDING_DIM, EMBEDDING_DIM)).astype(np.float32)
    matrix *= CONVERTER_SCALE / np.sqrt(EMBEDDING_DIM)
    nodes = [helper.make_node("MatMul", ["input", "matrix"], ["output"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, EMBEDDING_DIM])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, EMBEDDING_DIM])]
    return _model(nodes, inputs, outputs, [_tensor("matrix", matrix)], "converter_twin")


def enhancer(family: Family) -> onnx.ModelProto:
    size = family.size
    node = helper.make_node
    initializers = [
        _tensor("image_shape", np.array([1, 3, size, size], np.int64)),
        _tensor("low", np.float32(-1)),
        _tensor("high", np.float32(1)),
    ]
    nodes = [node("Reshape", ["input", "image_shape"], ["image"])]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])]
    if family.weight:
        nodes += [
            node("Cast", ["weight"], ["weight_float"], to=TensorProto.FLOAT),
            node("Reshape", ["weight_float", "weight_shape"], ["weight_planes"]),
            node("Add", ["weight_planes", "one"], ["gain"]),
        ]
        initializers += [
            _tensor("weight_shape", np.array([1, 1, 1, 1], np.int64)),
            _tensor("one", np.float32(1)),
        ]
        inputs.append(helper.make_tensor_value_info("weight", TensorProto.DOUBLE, [1]))
    else:
        initializers.append(_tensor("gain", np.float32(ENHANCE_GAIN)))
    nodes += [
        node("Mul", ["image", "gain"], ["boosted"]),
        node("Clip", ["boosted", "low", "high"], ["output"]),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, outputs, initializers, f"{family.name}_twin")


def write_family_twin(directory: Path, role: str, name: str) -> dict[str, Path]:
    """The twin of one swapper or enhancer family, and its converter twin when the family has one:
    role (and "converter") -> file."""
    directory.mkdir(parents=True, exist_ok=True)
    family = get_family(role, name)
    files = {role: directory / f"{family.name}_twin.onnx"}
    onnx.save(swapper(family) if role == "swapper" else enhancer(family), str(files[role]))
    if family.source in (CONVERTER, CONVERTER_UNIT):
        files[CONVERTER_ROLE] = directory / "converter_twin.onnx"
        onnx.save(converter(), str(files[CONVERTER_ROLE]))
    return files


def write_family_twins(directory: Path, swapper_family: str, enhancer_family: str) -> dict[str, Path]:
    """The swapper (with its converter) and enhancer twins of two families; role -> file."""
    swap = write_family_twin(directory, "swapper", swapper_family)
    return swap | write_family_twin(directory, "enhancer", enhancer_family)
