"""Contract twins: small ONNX models with the real models' exact interfaces and simple behaviour.

The real swapper and enhancer weights cannot be had everywhere (tests, machines without internet).
A twin has the same tensor names, shapes, dtypes, value ranges and batch-1 export quirks as the
real file, and documented deterministic behaviour that lets a test tell right from wrong:

- detector (SCRFD-2.5G layout, 9 outputs, fixed batch 1): reports the scripted faces, whatever
  the image, each with score 0.9 at one anchor; every other anchor scores 0.
- recognizer (ArcFace w600k_r50: `input.1` [N,3,112,112] -> `683` [N,512]): averages the crop over
  8x8 cells, standardises those 588 values and projects them with a fixed random matrix, so the
  same face gives nearly the same embedding and different faces different ones.
- swapper (inswapper_128: `target` [1,3,128,128] in [0,1], `source` [1,512] -> `output`
  [1,3,128,128] in [0,1], trailing `emap` [512,512]): output = 0.5 * target + 0.5 * tint, where
  tint = sigmoid(source @ C) is one RGB colour per source identity (C a fixed [512,3] matrix). So
  the output keeps half the target's structure, depends on both inputs and is never the identity.
- enhancer (GFPGAN 1.4: `input` [1,3,512,512] in [-1,1] -> `output`): raises contrast by a quarter
  around mid-grey, output = clip(1.25 * input, -1, 1).

Every fixed matrix comes from a seeded generator, so each twin is the same file on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelplane.tensors import SCRFD_LAYOUTS

OPSET = 11
SCORE = 0.9
SWAP_MIX = 0.5
ENHANCE_GAIN = 1.25
RECOGNIZER_CELL = 8


@dataclass(frozen=True)
class ScriptedFace:
    """A face the detector twin reports, in detector-input pixels."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: tuple[tuple[float, float], ...]  # 5 points: eyes, nose, mouth corners


def _model(nodes, inputs, outputs, initializers, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="twin")
    model.ir_version = 6
    onnx.checker.check_model(model, full_check=True)
    return model


def _tensor(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def scripted_outputs(faces: Sequence[ScriptedFace], size: int = 640) -> list[np.ndarray]:
    """SCRFD's nine raw outputs (scores, boxes, landmarks per stride 8/16/32) for `faces`.

    Each face sits at anchor 0 of the cell holding its box centre, at the stride nearest a
    quarter of its size; distances are in units of the stride, as SCRFD predicts them.
    """
    strides, anchors, _ = SCRFD_LAYOUTS[9]
    cells = {s: (size // s) ** 2 * anchors for s in strides}
    scores = {s: np.zeros((cells[s], 1), np.float32) for s in strides}
    boxes = {s: np.zeros((cells[s], 4), np.float32) for s in strides}
    points = {s: np.zeros((cells[s], 10), np.float32) for s in strides}
    for face in faces:
        x1, y1, x2, y2 = face.box
        extent = max(x2 - x1, y2 - y1)
        stride = min(strides, key=lambda s: abs(np.log2(extent / (4 * s))))
        column, row = int((x1 + x2) / 2 // stride), int((y1 + y2) / 2 // stride)
        index = (row * (size // stride) + column) * anchors
        if scores[stride][index, 0]:
            raise ValueError(f"two scripted faces share the anchor at ({column}, {row}), stride {stride}")
        cx, cy = column * stride, row * stride
        scores[stride][index] = SCORE
        boxes[stride][index] = np.array([cx - x1, cy - y1, x2 - cx, y2 - cy]) / stride
        points[stride][index] = (np.asarray(face.landmarks, np.float32) - (cx, cy)).ravel() / stride
    return [d[s] for d in (scores, boxes, points) for s in strides]


def detector(faces: Sequence[ScriptedFace], size: int = 640, batched: bool = True) -> onnx.ModelProto:
    """SCRFD-2.5G's interface (input `images`, outputs `out0`..`out8`), reporting `faces`.

    `batched` gives the [1, A, C] outputs of scrfd_2.5g_kps.onnx; otherwise the [A, C] outputs of
    InsightFace's unbatched exports. The input still flows into every output (times zero), so the
    graph has the real model's batch-1 Reshape that preparation must free.
    """
    constants = scripted_outputs(faces, size)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Reshape", ["nothing", "batch_shape"], ["offset"]),
    ]
    initializers = [_tensor("zero", np.float32(0)), _tensor("batch_shape", np.array([1, 1, 1], np.int64))]
    outputs = []
    for index, constant in enumerate(constants):
        name = f"out{index}"
        initializers.append(_tensor(f"scripted{index}", constant[None]))
        if batched:
            nodes.append(helper.make_node("Add", [f"scripted{index}", "offset"], [name]))
            shape = [1, *constant.shape]
        else:
            nodes.append(helper.make_node("Add", [f"scripted{index}", "offset"], [f"{name}_batched"]))
            initializers.append(_tensor(f"flat{index}", np.array([-1, constant.shape[1]], np.int64)))
            nodes.append(helper.make_node("Reshape", [f"{name}_batched", f"flat{index}"], [name]))
            shape = list(constant.shape)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, outputs, initializers, "detector_twin")


def recognizer(dim: int = 512, size: int = 112) -> onnx.ModelProto:
    cells = size // RECOGNIZER_CELL
    features = 3 * cells * cells
    projection = np.random.default_rng(size).standard_normal((features, dim)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool",
            ["input.1"],
            ["cells"],
            kernel_shape=[RECOGNIZER_CELL] * 2,
            strides=[RECOGNIZER_CELL] * 2,
        ),
        helper.make_node("Flatten", ["cells"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"]),
        helper.make_node("ReduceL2", ["centred"], ["spread"], axes=[1], keepdims=1),
        helper.make_node("Add", ["spread", "epsilon"], ["safe_spread"]),
        helper.make_node("Div", ["centred", "safe_spread"], ["standard"]),
        helper.make_node("MatMul", ["standard", "projection"], ["683"]),
    ]
    initializers = [_tensor("epsilon", np.float32(1e-6)), _tensor("projection", projection)]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])]
    return _model(nodes, inputs, outputs, initializers, "recognizer_twin")


def swapper(dim: int = 512, size: int = 128) -> onnx.ModelProto:
    rng = np.random.default_rng(size)
    colours = (rng.standard_normal((dim, 3)) * 2.0).astype(np.float32)
    emap = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["source", "colours"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["tint"]),
        helper.make_node("Reshape", ["tint", "tint_shape"], ["tint_planes"]),
        helper.make_node("Mul", ["target", "mix"], ["kept"]),
        helper.make_node("Mul", ["tint_planes", "mix"], ["painted"]),
        helper.make_node("Add", ["kept", "painted"], ["output"]),
    ]
    initializers = [
        _tensor("colours", colours),
        _tensor("tint_shape", np.array([1, 3, 1, 1], np.int64)),
        _tensor("mix", np.float32(SWAP_MIX)),
        _tensor("emap", emap),  # last, as in inswapper_128.onnx; clients read it from there
    ]
    inputs = [
        helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, size, size]),
        helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, dim]),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, outputs, initializers, "swapper_twin")


def enhancer(size: int = 512) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Reshape", ["input", "image_shape"], ["image"]),
        helper.make_node("Mul", ["image", "gain"], ["boosted"]),
        helper.make_node("Clip", ["boosted", "low", "high"], ["output"]),
    ]
    initializers = [
        _tensor("image_shape", np.array([1, 3, size, size], np.int64)),
        _tensor("gain", np.float32(ENHANCE_GAIN)),
        _tensor("low", np.float32(-1)),
        _tensor("high", np.float32(1)),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, outputs, initializers, "enhancer_twin")


def write_twins(directory: Path, detector_file: Path | None = None) -> dict[str, Path]:
    """Write the recognizer, swapper and enhancer twins, and a detector, into `directory`.

    The detector is `detector_file` (a real SCRFD, copied) when given, else a twin scripted with
    no faces. Returns role -> file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    if detector_file is not None:
        files["detector"] = directory / "detector.onnx"
        files["detector"].write_bytes(Path(detector_file).read_bytes())
    else:
        files["detector"] = directory / "detector_twin.onnx"
        onnx.save(detector(()), str(files["detector"]))
    for role, build in (("recognizer", recognizer), ("swapper", swapper), ("enhancer", enhancer)):
        files[role] = directory / f"{role}_twin.onnx"
        onnx.save(build(), str(files[role]))
    return files


# --- the identity swapper twin (pixel boost checks)


def identity_swapper(dim: int = 512, size: int = 128) -> onnx.ModelProto:
    """A swapper with an embedding source (inswapper_128's interface, `size` for its crop side; at other
    sizes prepared as an embedding family such as hyperswap) whose output is its target unchanged:
    the source flows in through a zero matrix, so the graph uses both inputs as the real file does."""
    rng = np.random.default_rng(size)
    emap = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["source", "nothing"], ["zeros"]),
        helper.make_node("Reshape", ["zeros", "zeros_shape"], ["zero_planes"]),
        helper.make_node("Add", ["target", "zero_planes"], ["output"]),
    ]
    initializers = [
        _tensor("nothing", np.zeros((dim, 3), np.float32)),
        _tensor("zeros_shape", np.array([1, 3, 1, 1], np.int64)),
        _tensor("emap", emap),  # last, as in inswapper_128.onnx
    ]
    inputs = [
        helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, size, size]),
        helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, dim]),
    ]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, size, size])]
    return _model(nodes, inputs, outputs, initializers, "identity_swapper_twin")
