"""Small ONNX graphs that run around the role models inside the ensembles.

Clients send uint8 HWC BGR images (4x fewer bytes than float32 tensors); these graphs turn them
into each model's normalised float NCHW RGB input and back, L2-normalise embeddings, and turn
SCRFD's raw anchor outputs into faces, so the whole chain runs on the GPU next to the models.

Each graph is built at its role model's opset (at least 11) from operators whose signature has
not changed since opset 11, so the CPU rendering can fuse it with the model into one graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from modelplane.tensors import DetectorOutput, Normalization

MIN_OPSET = 11  # NonMaxSuppression, TopK and Pad as these graphs use them
IR_VERSION = 8  # loadable by the ONNX Runtime builds in current Triton releases
BGR_TO_RGB = np.array([2, 1, 0], np.int64)  # the same permutation turns RGB back into BGR
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

# face_detect's outputs, and the defaults of its optional inputs (InsightFace's SCRFD defaults)
DETECTION_OUTPUTS = ("boxes", "scores", "landmarks", "count")
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_IOU_THRESHOLD = 0.4


def opset_for(model: onnx.ModelProto) -> int:
    """The opset to build a role model's graphs at: the model's own, at least MIN_OPSET."""
    own = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    return max(own, MIN_OPSET)


def _model(nodes, inputs, outputs, initializers, name: str, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="modelplane"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _constant(value, name: str, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _elem(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def image_to_tensor(
    size: tuple[int | None, int | None],
    norm: Normalization,
    dtype: np.dtype,
    input_name: str,
    output_name: str,
    opset: int = MIN_OPSET,
    size_name: str | None = None,
) -> onnx.ModelProto:
    """uint8 [B,H,W,3] BGR -> [B,3,H,W] RGB with (pixel - mean) / std, in the model's float type
    (H and W None: any size). With `size_name`, also each image's (H, W) as int64 [B,2].

    Planes are reordered while they are still bytes: a quarter of the memory traffic of floats.
    """
    height, width = size
    nodes = [
        helper.make_node("Transpose", [input_name], ["planar"], perm=[0, 3, 1, 2]),
        helper.make_node("Gather", ["planar", "bgr_to_rgb"], ["rgb"], axis=1),
        helper.make_node("Cast", ["rgb"], ["pixels"], to=FLOAT),
        helper.make_node("Sub", ["pixels", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inverse_std"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], [output_name], to=_elem(dtype)),
    ]
    mean, std = norm.planes()
    initializers = [
        _constant(BGR_TO_RGB, "bgr_to_rgb", np.int64),
        _constant(mean, "mean"),
        _constant(1.0 / std, "inverse_std"),
    ]
    inputs = [helper.make_tensor_value_info(input_name, TensorProto.UINT8, ["batch", height, width, 3])]
    outputs = [helper.make_tensor_value_info(output_name, _elem(dtype), ["batch", 3, height, width])]
    if size_name is not None:
        nodes += [
            helper.make_node("Shape", [input_name], ["image_shape"]),
            helper.make_node("Slice", ["image_shape", "first_axis", "height_axis"], ["batch_1d"]),
            helper.make_node("Slice", ["image_shape", "height_axis", "channel_axis"], ["one_size"]),
            helper.make_node("Concat", ["batch_1d", "one_1d"], ["column_shape"], axis=0),
            helper.make_node("Reshape", ["one_size", "row_shape"], ["size_row"]),
            helper.make_node("Tile", ["size_row", "column_shape"], [size_name]),
        ]
        initializers += [
            _constant([0], "first_axis", np.int64),
            _constant([1], "height_axis", np.int64),
            _constant([3], "channel_axis", np.int64),
            _constant([1], "one_1d", np.int64),
            _constant([1, 2], "row_shape", np.int64),
        ]
        outputs.append(helper.make_tensor_value_info(size_name, INT64, ["batch", 2]))
    return _model(nodes, inputs, outputs, initializers, "image_to_tensor", opset)


def tensor_to_image(
    size: tuple[int, int],
    norm: Normalization,
    dtype: np.dtype,
    input_name: str,
    output_name: str,
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """[B,3,H,W] RGB with values (pixel - mean) / std -> uint8 [B,H,W,3] BGR, rounded and clipped."""
    height, width = size
    nodes = [
        helper.make_node("Cast", [input_name], ["values"], to=FLOAT),
        helper.make_node("Mul", ["values", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "low", "high"], ["clipped"]),
        helper.make_node("Round", ["clipped"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["pixels"], to=TensorProto.UINT8),
        helper.make_node("Gather", ["pixels", "rgb_to_bgr"], ["bgr"], axis=1),
        helper.make_node("Transpose", ["bgr"], [output_name], perm=[0, 2, 3, 1]),
    ]
    mean, std = norm.planes()
    initializers = [
        _constant(std, "std"),
        _constant(mean, "mean"),
        _constant(0.0, "low"),
        _constant(255.0, "high"),
        _constant(BGR_TO_RGB, "rgb_to_bgr", np.int64),
    ]
    inputs = [helper.make_tensor_value_info(input_name, _elem(dtype), ["batch", 3, height, width])]
    outputs = [helper.make_tensor_value_info(output_name, TensorProto.UINT8, ["batch", height, width, 3])]
    return _model(nodes, inputs, outputs, initializers, "tensor_to_image", opset)


def l2_normalize(
    dim: int,
    dtype: np.dtype,
    input_name: str,
    output_name: str,
    opset: int = MIN_OPSET,
    raw_name: str | None = None,
) -> onnx.ModelProto:
    """[B,D] -> float32 [B,D] scaled to unit length, and with `raw_name` the input as float32 too."""
    values = raw_name or "values"
    nodes = [
        helper.make_node("Cast", [input_name], [values], to=FLOAT),
        helper.make_node("LpNormalization", [values], [output_name], axis=1, p=2),
    ]
    inputs = [helper.make_tensor_value_info(input_name, _elem(dtype), ["batch", dim])]
    outputs = [helper.make_tensor_value_info(output_name, FLOAT, ["batch", dim])]
    if raw_name is not None:
        outputs.append(helper.make_tensor_value_info(raw_name, FLOAT, ["batch", dim]))
    return _model(nodes, inputs, outputs, [], "l2_normalize", opset)


def embedding_to_latent(
    emap: np.ndarray, dtype: np.dtype, input_name: str, output_name: str, opset: int = MIN_OPSET
) -> onnx.ModelProto:
    """The inswapper source: normalize(normalize(embedding) @ emap), in the swapper's input type."""
    dim = emap.shape[0]
    nodes = [
        helper.make_node("LpNormalization", [input_name], ["unit"], axis=1, p=2),
        helper.make_node("MatMul", ["unit", "emap"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], ["unit_latent"], axis=1, p=2),
        helper.make_node("Cast", ["unit_latent"], [output_name], to=_elem(dtype)),
    ]
    inputs = [helper.make_tensor_value_info(input_name, FLOAT, ["batch", dim])]
    outputs = [helper.make_tensor_value_info(output_name, _elem(dtype), ["batch", dim])]
    return _model(nodes, inputs, outputs, [_constant(emap, "emap")], "embedding_to_latent", opset)


def source_vector(
    dim: int,
    dtype: np.dtype,
    out_dtype: np.dtype,
    unit: bool,
    input_name: str,
    output_name: str,
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """[B,D] -> [B,D] in the swapper's source type, scaled to unit length when `unit`."""
    nodes = [helper.make_node("Cast", [input_name], ["values"], to=FLOAT)]
    if unit:
        nodes.append(helper.make_node("LpNormalization", ["values"], ["unit"], axis=1, p=2))
    nodes.append(helper.make_node("Cast", ["unit" if unit else "values"], [output_name], to=_elem(out_dtype)))
    inputs = [helper.make_tensor_value_info(input_name, _elem(dtype), ["batch", dim])]
    outputs = [helper.make_tensor_value_info(output_name, _elem(out_dtype), ["batch", dim])]
    return _model(nodes, inputs, outputs, [], "source_vector", opset)


def weight_to_tensor(
    dtype: np.dtype, input_name: str, output_name: str, opset: int = MIN_OPSET
) -> onnx.ModelProto:
    """float32 [B,1] -> [B] in the model's type: CodeFormer's `weight`, one per crop."""
    nodes = [
        helper.make_node("Reshape", [input_name, "flat"], ["values"]),
        helper.make_node("Cast", ["values"], [output_name], to=_elem(dtype)),
    ]
    inputs = [helper.make_tensor_value_info(input_name, FLOAT, ["batch", 1])]
    outputs = [helper.make_tensor_value_info(output_name, _elem(dtype), ["batch"])]
    return _model(nodes, inputs, outputs, [_constant([-1], "flat", np.int64)], "weight_to_tensor", opset)


def _decode_stride(stride: int, anchors: int, names: dict[str, str]) -> tuple[list, list, list[str]]:
    """Nodes turning one stride's distances into boxes [B,A,4] and landmarks [B,A,10], input pixels.

    The anchor points, (column, row) * stride of every feature-map cell, row-major, each repeated
    `anchors` times as SCRFD orders them, are computed from `canvas` ((H, W) of the batch's images),
    so one graph decodes any input size the detector takes."""
    prefix = f"s{stride}_"
    node = helper.make_node
    initializers = [
        _constant(stride, f"{prefix}stride_int", np.int64),
        _constant([1, -1, 1, 1], f"{prefix}column_layout", np.int64),
        _constant([-1, 1, 1, 1], f"{prefix}row_layout", np.int64),
        _constant([anchors, 1], f"{prefix}anchor_tail", np.int64),
        _constant(np.array([-stride, -stride, stride, stride]), f"{prefix}box_scale"),
        _constant(np.float32(stride), f"{prefix}stride"),
    ]
    nodes = [
        node("Div", ["canvas", f"{prefix}stride_int"], [f"{prefix}cells"]),
        node("Gather", [f"{prefix}cells", "first"], [f"{prefix}rows"], axis=0),
        node("Gather", [f"{prefix}cells", "second"], [f"{prefix}columns"], axis=0),
        node("Range", ["first", f"{prefix}rows", "step"], [f"{prefix}row_range"]),
        node("Range", ["first", f"{prefix}columns", "step"], [f"{prefix}column_range"]),
        node("Concat", [f"{prefix}cells", f"{prefix}anchor_tail"], [f"{prefix}grid"], axis=0),
        node("Reshape", [f"{prefix}column_range", f"{prefix}column_layout"], [f"{prefix}x_line"]),
        node("Reshape", [f"{prefix}row_range", f"{prefix}row_layout"], [f"{prefix}y_line"]),
        node("Expand", [f"{prefix}x_line", f"{prefix}grid"], [f"{prefix}x_grid"]),
        node("Expand", [f"{prefix}y_line", f"{prefix}grid"], [f"{prefix}y_grid"]),
        node("Concat", [f"{prefix}x_grid", f"{prefix}y_grid"], [f"{prefix}cell_xy"], axis=3),
        node("Reshape", [f"{prefix}cell_xy", "point_rows"], [f"{prefix}cell_points"]),
        node("Cast", [f"{prefix}cell_points"], [f"{prefix}cell_float"], to=FLOAT),
        node("Mul", [f"{prefix}cell_float", f"{prefix}stride"], [f"{prefix}points_xy"]),
        node("Concat", [f"{prefix}points_xy"] * 2, [f"{prefix}box_origin"], axis=1),  # x, y, x, y
        node("Concat", [f"{prefix}points_xy"] * 5, [f"{prefix}point_origin"], axis=1),  # five pairs
        node("Cast", [names["scores"]], [f"{prefix}scores"], to=FLOAT),
        node("Cast", [names["boxes"]], [f"{prefix}distances"], to=FLOAT),
        node("Mul", [f"{prefix}distances", f"{prefix}box_scale"], [f"{prefix}offsets"]),
        node("Add", [f"{prefix}offsets", f"{prefix}box_origin"], [f"{prefix}boxes"]),
        node("Cast", [names["landmarks"]], [f"{prefix}point_distances"], to=FLOAT),
        node("Mul", [f"{prefix}point_distances", f"{prefix}stride"], [f"{prefix}point_offsets"]),
        node("Add", [f"{prefix}point_offsets", f"{prefix}point_origin"], [f"{prefix}points"]),
    ]
    return nodes, initializers, [f"{prefix}scores", f"{prefix}boxes", f"{prefix}points"]


def _select_one_image(max_faces: int) -> onnx.GraphProto:
    """Loop body for image i: candidates at or above its score threshold, NMS at its IoU threshold,
    the kept faces best first, padded with zeros to `max_faces`. Reads the stacked tensors
    `all_scores` [B,N], `all_boxes` [B,N,4], `all_points` [B,N,10], `score_thresholds` [B] and
    `iou_thresholds` [B] from the enclosing graph."""
    node = helper.make_node
    nodes = [
        node("Gather", ["all_scores", "i"], ["image_scores"], axis=0),
        node("Gather", ["all_boxes", "i"], ["image_boxes"], axis=0),
        node("Gather", ["all_points", "i"], ["image_points"], axis=0),
        node("Gather", ["score_thresholds", "i"], ["image_score_threshold"], axis=0),
        node("Gather", ["iou_thresholds", "i"], ["image_iou_threshold"], axis=0),
        # InsightFace keeps scores >= threshold; NonMaxSuppression's own threshold is strict
        node("Less", ["image_scores", "image_score_threshold"], ["below"]),
        node("Not", ["below"], ["passing"]),
        node("NonZero", ["passing"], ["passing_at"]),
        node("Reshape", ["passing_at", "flat"], ["candidates"]),
        node("Gather", ["image_scores", "candidates"], ["candidate_scores"], axis=0),
        node("Gather", ["image_boxes", "candidates"], ["candidate_boxes"], axis=0),
        node("Reshape", ["candidate_boxes", "nms_boxes_shape"], ["nms_boxes"]),
        node("Reshape", ["candidate_scores", "nms_scores_shape"], ["nms_scores"]),
        node(
            "NonMaxSuppression",
            ["nms_boxes", "nms_scores", "max_faces", "image_iou_threshold"],
            ["selected"],
        ),
        node("Gather", ["selected", "box_column"], ["selected_candidates"], axis=1),
        node("Gather", ["candidates", "selected_candidates"], ["kept"], axis=0),
        # best first, whatever order the execution provider's NonMaxSuppression returns
        node("Gather", ["image_scores", "kept"], ["kept_scores"], axis=0),
        node("Shape", ["kept"], ["image_count64"]),
        node("TopK", ["kept_scores", "image_count64"], ["_", "ranking"], axis=0, largest=1, sorted=1),
        node("Gather", ["kept", "ranking"], ["ranked"], axis=0),
        node("Gather", ["image_scores", "ranked"], ["face_scores"], axis=0),
        node("Gather", ["image_boxes", "ranked"], ["face_boxes"], axis=0),
        node("Gather", ["image_points", "ranked"], ["face_points"], axis=0),
        node("Sub", ["max_faces_1d", "image_count64"], ["missing"]),
        node("Concat", ["zero", "missing"], ["pads_1d"], axis=0),
        node("Concat", ["zero", "zero", "missing", "zero"], ["pads_2d"], axis=0),
        node("Pad", ["face_scores", "pads_1d"], ["padded_scores"]),
        node("Pad", ["face_boxes", "pads_2d"], ["padded_boxes"]),
        node("Pad", ["face_points", "pads_2d"], ["padded_points"]),
        node("Cast", ["image_count64"], ["image_count"], to=TensorProto.INT32),
        node("Identity", ["condition"], ["condition_out"]),
    ]
    initializers = [
        _constant([-1], "flat", np.int64),
        _constant([1, -1, 4], "nms_boxes_shape", np.int64),
        _constant([1, 1, -1], "nms_scores_shape", np.int64),
        _constant(max_faces, "max_faces", np.int64),
        _constant([max_faces], "max_faces_1d", np.int64),
        _constant(2, "box_column", np.int64),
        _constant([0], "zero", np.int64),
    ]
    inputs = [
        helper.make_tensor_value_info("i", INT64, []),
        helper.make_tensor_value_info("condition", TensorProto.BOOL, []),
    ]
    outputs = [
        helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("padded_boxes", FLOAT, [max_faces, 4]),
        helper.make_tensor_value_info("padded_scores", FLOAT, [max_faces]),
        helper.make_tensor_value_info("padded_points", FLOAT, [max_faces, 10]),
        helper.make_tensor_value_info("image_count", TensorProto.INT32, [1]),
    ]
    return helper.make_graph(nodes, "select_one_image", inputs, outputs, initializers)


def detections_to_faces(
    detections: Sequence[DetectorOutput],
    size: tuple[int, int],
    anchors: int,
    max_faces: int,
    opset: int = MIN_OPSET,
) -> onnx.ModelProto:
    """SCRFD's raw outputs -> the best `max_faces` faces of each image, in input pixels.

    Inputs: `<kind>_<stride>` as the detector gives them ([B,A,1|4|10]), and the optional
    `score_threshold` and `iou_threshold` [B,1] and `canvas_size` [B,2], the detector input's
    (H, W) (defaults inside the graph: InsightFace's thresholds, `size`). Outputs: `boxes`
    [B,K,4] (x1, y1, x2, y2), `scores` [B,K], `landmarks` [B,K,5,2], best first, zero after the
    first `count` [B,1] rows. Decoding follows InsightFace's SCRFD: anchor point (column, row) *
    stride, box = point -/+ distance * stride, landmark = point + offset * stride.
    """
    names = {(d.kind, d.stride): d.ensemble_name for d in detections}
    strides = sorted({d.stride for d in detections})
    nodes, initializers, decoded = [], [], []
    for stride in strides:
        stride_nodes, stride_constants, outputs = _decode_stride(
            stride, anchors, {kind: names[(kind, stride)] for kind in ("scores", "boxes", "landmarks")}
        )
        nodes += stride_nodes
        initializers += stride_constants
        decoded.append(outputs)
    node = helper.make_node
    nodes = [node("Gather", ["canvas_size", "first"], ["canvas"], axis=0), *nodes]
    nodes += [
        node("Concat", [d[0] for d in decoded], ["stacked_scores"], axis=1),
        node("Reshape", ["stacked_scores", "batch_rows"], ["all_scores"]),
        node("Concat", [d[1] for d in decoded], ["all_boxes"], axis=1),
        node("Concat", [d[2] for d in decoded], ["all_points"], axis=1),
        node("Shape", ["all_scores"], ["scores_shape"]),
        node("Gather", ["scores_shape", "first"], ["images"], axis=0),
        node("Slice", ["scores_shape", "zero_1d", "one_1d"], ["images_1d"]),
        node("Concat", ["images_1d", "one_1d"], ["column_shape"], axis=0),
        node("Expand", ["score_threshold", "column_shape"], ["score_column"]),
        node("Expand", ["iou_threshold", "column_shape"], ["iou_column"]),
        node("Reshape", ["score_column", "minus_one"], ["score_thresholds"]),
        node("Reshape", ["iou_column", "minus_one"], ["iou_thresholds"]),
        node(
            "Loop",
            ["images", ""],
            ["boxes", "scores", "flat_landmarks", "count"],
            body=_select_one_image(max_faces),
        ),
        node("Reshape", ["flat_landmarks", "landmarks_shape"], ["landmarks"]),
    ]
    initializers += [
        _constant([0, -1], "batch_rows", np.int64),
        _constant(0, "first", np.int64),
        _constant(1, "second", np.int64),
        _constant(1, "step", np.int64),
        _constant([-1, 2], "point_rows", np.int64),
        _constant([0], "zero_1d", np.int64),
        _constant([1], "one_1d", np.int64),
        _constant([-1], "minus_one", np.int64),
        _constant([-1, max_faces, 5, 2], "landmarks_shape", np.int64),
        _constant([[DEFAULT_SCORE_THRESHOLD]], "score_threshold"),
        _constant([[DEFAULT_IOU_THRESHOLD]], "iou_threshold"),
        _constant([size], "canvas_size", np.int64),
    ]
    inputs = [
        helper.make_tensor_value_info(
            d.ensemble_name, _elem(d.spec.dtype), ["batch", f"anchors_{d.stride}", d.spec.shape[-1]]
        )
        for d in detections
    ]
    inputs += [
        helper.make_tensor_value_info("score_threshold", FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("iou_threshold", FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("canvas_size", INT64, ["batch", 2]),
    ]
    outputs = [
        helper.make_tensor_value_info("boxes", FLOAT, ["batch", max_faces, 4]),
        helper.make_tensor_value_info("scores", FLOAT, ["batch", max_faces]),
        helper.make_tensor_value_info("landmarks", FLOAT, ["batch", max_faces, 5, 2]),
        helper.make_tensor_value_info("count", TensorProto.INT32, ["batch", 1]),
    ]
    return _model(nodes, inputs, outputs, initializers, "detections_to_faces", opset)
