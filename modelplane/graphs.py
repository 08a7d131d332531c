"""Small ONNX graphs that run around the role models inside the ensembles.

Clients send uint8 HWC BGR images (4x fewer bytes than float32 tensors); these graphs turn them
into each model's normalised float NCHW RGB input and back, and L2-normalise embeddings, so the
whole chain runs on the GPU next to the models.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelplane.roles import Normalization

OPSET = 17
IR_VERSION = 8  # loadable by the ONNX Runtime builds in current Triton releases
BGR_TO_RGB = np.array([2, 1, 0], np.int64)  # the same permutation turns RGB back into BGR


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="modelplane"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _constant(value, name: str, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def image_to_tensor(
    size: tuple[int, int], norm: Normalization, dtype: np.dtype, input_name: str, output_name: str
) -> onnx.ModelProto:
    """uint8 [B,H,W,3] BGR -> [B,3,H,W] RGB with (pixel - mean) / std, in the model's float type."""
    height, width = size
    nodes = [
        helper.make_node("Cast", [input_name], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["pixels"], ["planar"], perm=[0, 3, 1, 2]),
        helper.make_node("Gather", ["planar", "bgr_to_rgb"], ["rgb"], axis=1),
        helper.make_node("Sub", ["rgb", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inverse_std"], ["scaled"]),
        helper.make_node(
            "Cast", ["scaled"], [output_name], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        ),
    ]
    initializers = [
        _constant(BGR_TO_RGB, "bgr_to_rgb", np.int64),
        _constant(norm.mean, "mean"),
        _constant(1.0 / norm.std, "inverse_std"),
    ]
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", height, width, 3])]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    outputs = [helper.make_tensor_value_info(output_name, elem, ["batch", 3, height, width])]
    return _model(nodes, inputs, outputs, initializers, "image_to_tensor")


def tensor_to_image(
    size: tuple[int, int], norm: Normalization, dtype: np.dtype, input_name: str, output_name: str
) -> onnx.ModelProto:
    """[B,3,H,W] RGB with values (pixel - mean) / std -> uint8 [B,H,W,3] BGR, rounded and clipped."""
    height, width = size
    nodes = [
        helper.make_node("Cast", [input_name], ["values"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["values", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "low", "high"], ["clipped"]),
        helper.make_node("Round", ["clipped"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["pixels"], to=TensorProto.UINT8),
        helper.make_node("Gather", ["pixels", "rgb_to_bgr"], ["bgr"], axis=1),
        helper.make_node("Transpose", ["bgr"], [output_name], perm=[0, 2, 3, 1]),
    ]
    initializers = [
        _constant(norm.std, "std"),
        _constant(norm.mean, "mean"),
        _constant(0.0, "low"),
        _constant(255.0, "high"),
        _constant(BGR_TO_RGB, "rgb_to_bgr", np.int64),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info(input_name, elem, ["batch", 3, height, width])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.UINT8, ["batch", height, width, 3])]
    return _model(nodes, inputs, outputs, initializers, "tensor_to_image")


def l2_normalize(dim: int, dtype: np.dtype, input_name: str, output_name: str) -> onnx.ModelProto:
    """[B,D] -> float32 [B,D] scaled to unit length."""
    nodes = [
        helper.make_node("Cast", [input_name], ["values"], to=TensorProto.FLOAT),
        helper.make_node("LpNormalization", ["values"], [output_name], axis=1, p=2),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info(input_name, elem, ["batch", dim])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", dim])]
    return _model(nodes, inputs, outputs, [], "l2_normalize")


def embedding_to_latent(
    emap: np.ndarray, dtype: np.dtype, input_name: str, output_name: str
) -> onnx.ModelProto:
    """The inswapper source: normalize(normalize(embedding) @ emap), in the swapper's input type."""
    dim = emap.shape[0]
    nodes = [
        helper.make_node("LpNormalization", [input_name], ["unit"], axis=1, p=2),
        helper.make_node("MatMul", ["unit", "emap"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], ["unit_latent"], axis=1, p=2),
        helper.make_node(
            "Cast", ["unit_latent"], [output_name], to=helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        ),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", dim])]
    outputs = [helper.make_tensor_value_info(output_name, elem, ["batch", dim])]
    return _model(nodes, inputs, outputs, [_constant(emap, "emap")], "embedding_to_latent")
