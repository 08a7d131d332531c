"""The optional mask roles: occluder (XSeg), parser (BiSeNet), landmarker (2DFAN4), and their ensembles.

A repository works without them; each one present adds a uint8 ensemble next to the others:

    face_occlusion  crop uint8 [B,S,S,3] BGR, aligned   -> mask uint8 [B,S,S]: 255 where the face shows,
                                                           0 where something covers it
    face_parse      crop uint8 [B,P,P,3] BGR, aligned   -> classes uint8 [B,P,P]: each pixel's BiSeNet
                                                           class (arg-max of the logits, in the graph)
    face_landmark   crop uint8 [B,L,L,3] BGR, the face  -> landmarks float32 [B,68,2] in crop pixels,
                    box scaled and centred (FaceFusion's)  scores float32 [B,68] (heatmap peaks)

Contracts, read from each file: the occluder takes NHWC float [B,S,S,3] BGR in 0..1 and gives one
mask channel ([B,S,S,1] or [B,S,S]); the parser NCHW float [B,3,P,P] RGB normalised with ImageNet's
mean and std, its first output the class logits [B,C,P,P] (C >= 14, lower lip being class 13); the
landmarker NCHW float [B,3,L,L] BGR in 0..1, giving points [B,68,>=2] in heatmap cells and heatmaps
[B,68,H,H].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from modelplane import contract, graphs, mask_twins
from modelplane.configs import Batching, Ensemble, Step
from modelplane.errors import InterfaceError
from modelplane.registry import Built, Entry, Role, checked_model
from modelplane.tensors import (
    FLOAT32,
    UINT8,
    Normalization,
    TensorSpec,
    batched,
    check_float,
    check_image,
    describe,
    fail,
    graph_inputs,
    graph_outputs,
    single,
    square_side,
)

ENSEMBLES = {"occluder": contract.OCCLUSION, "parser": contract.PARSE, "landmarker": contract.LANDMARK}
BATCHING = {
    "occluder": Batching(32, (8, 16, 32), 1000),
    "parser": Batching(16, (4, 8, 16), 2000),
    "landmarker": Batching(32, (8, 16, 32), 1000),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of pixels in 0..1
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_CLASSES = 14  # BiSeNet's face classes up to the lower lip (13)
LANDMARKS = 68


@dataclass(frozen=True)
class MaskInterface:
    """A mask role model's interface as read from its file."""

    role: str
    image: TensorSpec
    outputs: tuple[TensorSpec, ...]  # every output of the file; the first is the one used (and heatmaps)
    size: int  # side of the square image input
    heatmap: int = 0  # landmarker: side of the heatmaps, the unit of its points


def read_mask_interface(role: str, model: onnx.ModelProto) -> MaskInterface:
    """Check `model` against a mask role's contract and describe it; raises InterfaceError."""
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    image = single(role, inputs, "input")
    if role == "occluder":
        expected = "an NHWC image tensor [batch,S,S,3]"
        check_float(role, image)
        if image.rank != 4 or image.shape[3] != 3:
            raise fail(role, image.name, expected, describe(image))
        size = square_side(role, image, (1, 2), expected)
        mask = single(role, outputs, "output")
        check_float(role, mask)
        if (
            mask.rank not in (3, 4)
            or tuple(mask.shape[1:3]) != (size, size)
            or mask.shape[3:] not in ((), (1,))
        ):
            raise fail(
                role, mask.name, f"a mask [batch,{size},{size},1] or [batch,{size},{size}]", describe(mask)
            )
        return MaskInterface(role, image, tuple(outputs), size)
    check_image(role, image)
    size = square_side(role, image, (2, 3), "a fixed square image size [batch,3,S,S]")
    if role == "parser":
        if not outputs:
            raise InterfaceError(f"{role}: the model has no outputs")
        logits = outputs[0]
        check_float(role, logits)
        classes = logits.shape[1] if logits.rank == 4 else None
        if classes is None or classes < MIN_CLASSES or tuple(logits.shape[2:]) != (size, size):
            raise fail(
                role, logits.name, f"class logits [batch,C>={MIN_CLASSES},{size},{size}]", describe(logits)
            )
        return MaskInterface(role, image, tuple(outputs), size)
    if role == "landmarker":
        points = next((o for o in outputs if o.rank == 3), None)
        heatmaps = next((o for o in outputs if o.rank == 4), None)
        if points is None or heatmaps is None:
            got = ", ".join(f"{o.name} {describe(o)}" for o in outputs)
            raise InterfaceError(
                f"{role}: expected points [batch,68,3] and heatmaps [batch,68,H,H], got {got}"
            )
        for spec in (points, heatmaps):
            check_float(role, spec)
        if points.shape[1] != LANDMARKS or points.shape[2] is None or points.shape[2] < 2:
            raise fail(role, points.name, "points [batch,68,2 or 3]", describe(points))
        if heatmaps.shape[1] != LANDMARKS:
            raise fail(role, heatmaps.name, "heatmaps [batch,68,H,H]", describe(heatmaps))
        side = square_side(role, heatmaps, (2, 3), "heatmaps [batch,68,H,H]")
        rest = tuple(o for o in outputs if o not in (points, heatmaps))
        return MaskInterface(role, image, (points, heatmaps, *rest), size, heatmap=side)
    raise ValueError(f"unknown mask role {role!r}")


def sample_inputs(interface: MaskInterface, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs in the image's working range, for verifying the batch axis."""
    shape = (batch, *(interface.size if d is None else d for d in interface.image.shape[1:]))
    pixels = np.random.default_rng(seed).uniform(0, 1, shape)
    return {interface.image.name: pixels.astype(interface.image.dtype)}


def _elem(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def _graph(nodes, inputs, outputs, initializers, name: str, opset: int) -> onnx.ModelProto:
    return graphs._model(nodes, inputs, outputs, initializers, name, opset)


def _value(name: str, elem: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["batch", *shape])


def bytes_to_unit(size: int, layout: str, dtype: np.dtype, opset: int) -> onnx.ModelProto:
    """uint8 [B,S,S,3] BGR -> BGR in 0..1, as [B,S,S,3] (layout "nhwc") or [B,3,S,S] ("nchw")."""
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "inverse_255"], ["unit"]),
    ]
    shape = [size, size, 3]
    if layout == "nchw":
        nodes.append(helper.make_node("Transpose", ["unit"], ["planar"], perm=[0, 3, 1, 2]))
        shape = [3, size, size]
    nodes.append(helper.make_node("Cast", [nodes[-1].output[0]], ["tensor"], to=_elem(dtype)))
    return _graph(
        nodes,
        [_value("image", TensorProto.UINT8, [size, size, 3])],
        [_value("tensor", _elem(dtype), shape)],
        [graphs._constant(1 / 255, "inverse_255")],
        "bytes_to_unit",
        opset,
    )


def mask_to_bytes(spec: TensorSpec, size: int, opset: int) -> onnx.ModelProto:
    """The occluder's mask [B,S,S(,1)] in 0..1 -> uint8 [B,S,S], 255 where the face shows."""
    nodes = [
        helper.make_node("Cast", ["tensor"], ["values"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["values", "plane_shape"], ["plane"]),
        helper.make_node("Clip", ["plane", "zero", "one"], ["clipped"]),
        helper.make_node("Mul", ["clipped", "full"], ["scaled"]),
        helper.make_node("Round", ["scaled"], ["rounded"]),
        helper.make_node("Cast", ["rounded"], ["mask"], to=TensorProto.UINT8),
    ]
    constants = [
        graphs._constant([-1, size, size], "plane_shape", np.int64),
        graphs._constant(0.0, "zero"),
        graphs._constant(1.0, "one"),
        graphs._constant(255.0, "full"),
    ]
    inputs = [_value("tensor", _elem(spec.dtype), spec.shape[1:])]
    return _graph(
        nodes, inputs, [_value("mask", TensorProto.UINT8, [size, size])], constants, "mask_to_bytes", opset
    )


def logits_to_classes(spec: TensorSpec, size: int, opset: int) -> onnx.ModelProto:
    """The parser's logits [B,C,P,P] -> uint8 [B,P,P], the most likely class of each pixel."""
    nodes = [
        helper.make_node("Cast", ["tensor"], ["logits"], to=TensorProto.FLOAT),
        helper.make_node("ArgMax", ["logits"], ["best"], axis=1, keepdims=0),
        helper.make_node("Cast", ["best"], ["classes"], to=TensorProto.UINT8),
    ]
    inputs = [_value("tensor", _elem(spec.dtype), spec.shape[1:])]
    outputs = [_value("classes", TensorProto.UINT8, [size, size])]
    return _graph(nodes, inputs, outputs, [], "logits_to_classes", opset)


def heatmaps_to_landmarks(it: MaskInterface, opset: int) -> onnx.ModelProto:
    """The landmarker's points [B,68,K] (heatmap cells) -> float32 [B,68,2] in crop pixels, and each
    point's heatmap peak [B,68] as its score."""
    points, heatmaps = it.outputs[0], it.outputs[1]
    nodes = [
        helper.make_node("Cast", ["points"], ["cells"], to=TensorProto.FLOAT),
        helper.make_node("Slice", ["cells", "start", "end", "axis"], ["xy"]),
        helper.make_node("Mul", ["xy", "cell_size"], ["landmarks"]),
        helper.make_node("Cast", ["heatmaps"], ["maps"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["maps"], ["scores"], axes=[2, 3], keepdims=0),
    ]
    constants = [
        graphs._constant([0], "start", np.int64),
        graphs._constant([2], "end", np.int64),
        graphs._constant([2], "axis", np.int64),
        graphs._constant(it.size / it.heatmap, "cell_size"),
    ]
    inputs = [
        _value("points", _elem(points.dtype), points.shape[1:]),
        _value("heatmaps", _elem(heatmaps.dtype), heatmaps.shape[1:]),
    ]
    outputs = [
        _value("landmarks", TensorProto.FLOAT, [LANDMARKS, 2]),
        _value("scores", TensorProto.FLOAT, [LANDMARKS]),
    ]
    return _graph(nodes, inputs, outputs, constants, "heatmaps_to_landmarks", opset)


_spec = batched


def mask_entries(
    role: str, model: onnx.ModelProto, it: MaskInterface, batching: Batching, warmup: bool
) -> list[Entry]:
    """The role model and its pre/post graphs."""
    quick = Batching(batching.max_batch_size)
    opset = graphs.opset_for(model)
    size = it.size
    crop = [_spec("image", UINT8, (size, size, 3))]
    if role == "parser":  # per-channel mean and std, which broadcast over the planes
        mean = np.array(IMAGENET_MEAN, np.float32).reshape(3, 1, 1) * 255
        std = np.array(IMAGENET_STD, np.float32).reshape(3, 1, 1) * 255
        pre = graphs.image_to_tensor(
            (size, size), Normalization(mean, std), it.image.dtype, "image", "tensor", opset
        )
    else:
        pre = bytes_to_unit(size, "nhwc" if role == "occluder" else "nchw", it.image.dtype, opset)
    entries = [
        Entry(role, model, [it.image], list(it.outputs), batching, warmup=warmup),
        Entry(f"{role}_preprocess", pre, crop, [_spec("tensor", it.image.dtype, it.image.shape[1:])], quick),
    ]
    first = it.outputs[0]
    if role == "landmarker":
        post = heatmaps_to_landmarks(it, opset)
        post_in = [
            TensorSpec("points", first.dtype, first.shape),
            TensorSpec("heatmaps", it.outputs[1].dtype, it.outputs[1].shape),
        ]
        post_out = [_spec("landmarks", FLOAT32, (LANDMARKS, 2)), _spec("scores", FLOAT32, (LANDMARKS,))]
    else:
        to_bytes, name = (mask_to_bytes, "mask") if role == "occluder" else (logits_to_classes, "classes")
        post = to_bytes(first, size, opset)
        post_in = [TensorSpec("tensor", first.dtype, first.shape)]
        post_out = [_spec(name, UINT8, (size, size))]
    entries.append(Entry(f"{role}_postprocess", post, post_in, post_out, quick))
    return entries


def mask_ensemble(role: str, it: MaskInterface, batching: Batching) -> Ensemble:
    """The uint8 ensemble of a mask role: crop in, preprocess -> model -> postprocess, bytes or points out."""
    size = it.size
    if role == "landmarker":
        model_outputs = {it.outputs[0].name: "raw_points", it.outputs[1].name: "raw_heatmaps"}
        post_inputs = {"points": "raw_points", "heatmaps": "raw_heatmaps"}
        outputs = [_spec("landmarks", FLOAT32, (LANDMARKS, 2)), _spec("scores", FLOAT32, (LANDMARKS,))]
    else:
        model_outputs = {it.outputs[0].name: "raw"}
        post_inputs = {"tensor": "raw"}
        name = "mask" if role == "occluder" else "classes"
        outputs = [_spec(name, UINT8, (size, size))]
    return Ensemble(
        ENSEMBLES[role],
        [_spec(contract.CROP, UINT8, (size, size, 3))],
        outputs,
        [
            Step(f"{role}_preprocess", {"image": contract.CROP}, {"tensor": f"{role}_input"}),
            Step(role, {it.image.name: f"{role}_input"}, model_outputs),
            Step(f"{role}_postprocess", post_inputs, {s.name: s.name for s in outputs}),
        ],
        batching,
    )


def _preparer(role: str):
    def prepare(files: dict[str, Path], options) -> Built:
        samples = lambda it: sample_inputs(it, options.verify_batch)  # noqa: E731
        model, it = checked_model(role, files[role], lambda m: read_mask_interface(role, m), samples)
        batching = options.batching.get(role, BATCHING[role])
        return Built(
            mask_entries(role, model, it, batching, options.warmup), [mask_ensemble(role, it, batching)]
        )

    return prepare


def _twin(role: str):
    def write_twin(directory: Path, family: str | None = None) -> dict[str, Path]:
        return {role: mask_twins.write_mask_twin(directory, role)}

    return write_twin


HELP = {
    "occluder": "the occlusion mask's model (XSeg): what covers a face",
    "parser": "the region mask's model (BiSeNet): face parsing",
    "landmarker": "the area and mouth masks' model (2DFAN4): 68 landmarks",
}
ROLES = tuple(
    Role(role, False, (ENSEMBLES[role],), _preparer(role), _twin(role), BATCHING[role], help=HELP[role])
    for role in ("occluder", "parser", "landmarker")
)
