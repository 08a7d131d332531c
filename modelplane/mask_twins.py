"""Contract twins of the mask roles, with documented behaviour a test can predict:

- occluder (XSeg: `input` [1,256,256,3] BGR in 0..1 -> `output` [1,256,256,1]): a pixel is covered
  (0) when it is strongly green, its green exceeding both blue and red by more than half the range;
  every other pixel shows (1). So a pure-green patch over a face is the occluder a test paints.
- parser (BiSeNet: `input` [1,3,512,512] normalised RGB -> `output` [1,19,512,512] logits): labels
  by a fixed layout of the aligned crop, `PARSER_LAYOUT`: rectangles in fractions of the crop side,
  painted in order over background (0), whatever the image.
- landmarker (2DFAN4: `input` [1,3,256,256] BGR in 0..1 -> `points` [1,68,3] in 64-cell heatmap
  units and `heatmaps` [1,68,64,64]): the 68 points of `landmark_layout()`, a fixed face drawn in
  the crop that FaceFusion cuts around a detected box, whatever the image; every heatmap peaks at 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelplane.twins import _model, _tensor

OCCLUDER_SIZE = 256
PARSER_SIZE = 512
PARSER_CLASSES = 19
LANDMARKER_SIZE = 256
HEATMAP_SIZE = 64
GREEN_MARGIN = 0.5  # green above max(blue, red) by more than this (of 0..1) marks a covered pixel

# (class, (x1, y1, x2, y2)) in fractions of the aligned crop's side, painted in this order.
PARSER_LAYOUT = (
    (17, (0.0, 0.0, 1.0, 0.12)),  # hair
    (1, (0.15, 0.15, 0.85, 0.95)),  # skin
    (2, (0.24, 0.28, 0.46, 0.33)),  # left eyebrow
    (3, (0.54, 0.28, 0.76, 0.33)),  # right eyebrow
    (4, (0.27, 0.36, 0.45, 0.44)),  # left eye
    (5, (0.55, 0.36, 0.73, 0.44)),  # right eye
    (10, (0.43, 0.46, 0.57, 0.62)),  # nose
    (12, (0.36, 0.66, 0.64, 0.70)),  # upper lip
    (11, (0.36, 0.70, 0.64, 0.74)),  # mouth
    (13, (0.36, 0.74, 0.64, 0.79)),  # lower lip
)


def parser_classes(size: int = PARSER_SIZE) -> np.ndarray:
    """The parser twin's class map, uint8 [size, size]."""
    classes = np.zeros((size, size), np.uint8)
    for label, (x1, y1, x2, y2) in PARSER_LAYOUT:
        classes[round(y1 * size) : round(y2 * size), round(x1 * size) : round(x2 * size)] = label
    return classes


def _ellipse(centre, radii, start: float, stop: float, count: int) -> np.ndarray:
    angles = np.linspace(start, stop, count)
    return np.stack([centre[0] + radii[0] * np.cos(angles), centre[1] + radii[1] * np.sin(angles)], axis=1)


def landmark_layout(size: int = LANDMARKER_SIZE) -> np.ndarray:
    """The landmarker twin's 68 points, float32 [68, 2] in crop pixels, in the iBUG 68 order: jaw 0-16,
    eyebrows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67."""
    turn = np.linspace(0, np.pi, 17)
    jaw = np.stack([128 - 85 * np.cos(turn), 100 + 110 * np.sin(turn)], 1)  # ear to ear, under the chin
    brows = np.concatenate(
        [
            np.stack([np.linspace(60, 115, 5), np.full(5, 75.0)], 1),
            np.stack([np.linspace(141, 196, 5), np.full(5, 75.0)], 1),
        ]
    )
    bridge = np.stack([np.full(4, 128.0), np.linspace(95, 140, 4)], 1)
    nostrils = np.stack([np.linspace(108, 148, 5), np.full(5, 150.0)], 1)
    eyes = np.concatenate(
        [
            _ellipse((88, 100), (16, 6), np.pi, -np.pi, 7)[:6],
            _ellipse((168, 100), (16, 6), np.pi, -np.pi, 7)[:6],
        ]
    )
    outer = _ellipse((128, 178), (30, 12), np.pi, -np.pi, 13)[:12]
    inner = _ellipse((128, 178), (20, 5), np.pi, -np.pi, 9)[:8]
    points = np.concatenate([jaw, brows, bridge, nostrils, eyes, outer, inner]).astype(np.float32)
    return points * (size / LANDMARKER_SIZE)


def _batch_zeros() -> tuple[list, list]:
    """Nodes giving `nothing`, zeros [B,1,1,1] from `input`, so constant outputs follow its batch axis."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
    ]
    return nodes, [_tensor("zero", np.float32(0))]


def occluder(size: int = OCCLUDER_SIZE) -> onnx.ModelProto:
    nodes, initializers = [], [_tensor("last", np.array([3], np.int64))]
    for index, name in enumerate(("blue", "green", "red")):  # the planes of the NHWC input
        nodes.append(helper.make_node("Slice", ["input", f"from{index}", f"to{index}", "last"], [name]))
        initializers += [
            _tensor(f"from{index}", np.array([index])),
            _tensor(f"to{index}", np.array([index + 1])),
        ]
    nodes += [
        helper.make_node("Max", ["blue", "red"], ["other"]),
        helper.make_node("Sub", ["green", "other"], ["greenness"]),
        helper.make_node("Greater", ["greenness", "margin"], ["covered"]),
        helper.make_node("Not", ["covered"], ["shows"]),
        helper.make_node("Cast", ["shows"], ["output"], to=TensorProto.FLOAT),
    ]
    initializers.append(_tensor("margin", np.float32(GREEN_MARGIN)))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, size, size, 3])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, size, size, 1])]
    return _model(nodes, inputs, outputs, initializers, "occluder_twin")


def parser(size: int = PARSER_SIZE) -> onnx.ModelProto:
    batch_nodes, batch_constants = _batch_zeros()
    nodes = batch_nodes + [
        helper.make_node("Cast", ["layout"], ["layout_ids"], to=TensorProto.INT32),
        helper.make_node("Equal", ["layout_ids", "class_ids"], ["is_class"]),
        helper.make_node("Cast", ["is_class"], ["one_hot"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["one_hot", "nothing"], ["output"]),
    ]
    initializers = batch_constants + [
        _tensor("layout", parser_classes(size)[None, None]),
        _tensor("class_ids", np.arange(PARSER_CLASSES, dtype=np.int32).reshape(1, -1, 1, 1)),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, PARSER_CLASSES, size, size])]
    return _model(nodes, inputs, outputs, initializers, "parser_twin")


def landmarker(size: int = LANDMARKER_SIZE, cells: int = HEATMAP_SIZE) -> onnx.ModelProto:
    points = landmark_layout(size) * (cells / size)
    points = np.concatenate([points, np.ones((len(points), 1), np.float32)], axis=1)[None]
    batch_nodes, batch_constants = _batch_zeros()
    nodes = batch_nodes + [
        helper.make_node("Reshape", ["nothing", "column"], ["offset"]),
        helper.make_node("Add", ["layout", "offset"], ["points"]),
        helper.make_node("Expand", ["peak", "heatmap_shape"], ["peaks"]),
        helper.make_node("Add", ["peaks", "nothing"], ["heatmaps"]),
    ]
    initializers = batch_constants + [
        _tensor("column", np.array([-1, 1, 1], np.int64)),
        _tensor("layout", points.astype(np.float32)),
        _tensor("peak", np.float32(1)),
        _tensor("heatmap_shape", np.array([1, len(points[0]), cells, cells], np.int64)),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])]
    outputs = [
        helper.make_tensor_value_info("points", TensorProto.FLOAT, [1, 68, 3]),
        helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, [1, 68, cells, cells]),
    ]
    return _model(nodes, inputs, outputs, initializers, "landmarker_twin")


BUILDERS = {"occluder": occluder, "parser": parser, "landmarker": landmarker}


def write_mask_twin(directory: Path, role: str) -> Path:
    """Write one mask role's twin into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{role}_twin.onnx"
    onnx.save(BUILDERS[role](), str(path))
    return path


def write_mask_twins(directory: Path) -> dict[str, Path]:
    """Write the occluder, parser and landmarker twins into `directory`; returns role -> file."""
    return {role: write_mask_twin(directory, role) for role in BUILDERS}
