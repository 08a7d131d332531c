"""The detector role (SCRFD): its contract, its preparation and the `face_detect` ensembles.

    face_detect      image uint8 [B,H,W,3] BGR, letterboxed;   -> boxes [B,K,4], scores [B,K], landmarks
                     optional score_threshold, iou_threshold      [B,K,5,2], count [B,1]: the best K faces,
                     [B,1]                                        best first, in input pixels
    face_detect_raw  the same image                            -> scores_S, boxes_S, landmarks_S per stride S

SCRFD's decoding and NMS run in the graph (modelplane.graphs). A detector whose graph computes at
any input size is served at any size (a multiple of its largest stride), so frames are letterboxed to
their own shape rounded up rather than to a square.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from modelplane import contract, graphs, twins
from modelplane.configs import Batching, Ensemble, Step
from modelplane.errors import InterfaceError
from modelplane.registry import Built, Entry, Role, checked_model
from modelplane.surgery import free_input_size
from modelplane.tensors import (
    FLOAT32,
    SCRFD_LAYOUTS,
    UINT8,
    DetectorOutput,
    Normalization,
    TensorSpec,
    batched,
    check_float,
    check_image,
    describe,
    fail,
    graph_inputs,
    graph_outputs,
    image_inputs,
    single,
)

NAME = "detector"
DETECTION_KINDS = ("scores", "boxes", "landmarks")
DETECTION_WIDTHS = {"scores": 1, "boxes": 4, "landmarks": 10}
THRESHOLDS = (contract.SCORE_THRESHOLD, contract.IOU_THRESHOLD)  # face_detect's optional inputs
DETECTION_OPTIONS = (*THRESHOLDS, "canvas_size")  # detector_postprocess's: defaults in the graph
INPUT_NORM = Normalization(127.5, 128.0)


@dataclass(frozen=True)
class DetectorInterface:
    """A detector file's interface: its image input, its raw outputs by kind and stride."""

    image: TensorSpec  # NCHW, at the reference size when the file's is dynamic
    outputs: tuple[TensorSpec, ...]
    detections: tuple[DetectorOutput, ...]
    anchors: int  # per feature-map cell
    any_size: bool = False  # served at any H, W that are multiples of its largest stride

    @property
    def canvas(self) -> tuple[int | None, int | None]:
        """(height, width) the image input is served at: `size`, or (None, None) for any size."""
        return (None, None) if self.any_size else self.size

    @property
    def stride(self) -> int:
        """The largest stride: what every served input side must be a multiple of."""
        return max(d.stride for d in self.detections)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the reference image input."""
        return self.image.shape[2], self.image.shape[3]


def read_detector(model: onnx.ModelProto, detector_size: int = 640) -> DetectorInterface:
    """Check `model` against SCRFD's contract and describe it; raises InterfaceError."""
    image = single(NAME, graph_inputs(model), "input")
    outputs = graph_outputs(model)
    check_image(NAME, image)
    if image.shape[2] is None or image.shape[3] is None:  # dynamic size: fix it to the chosen size
        image = TensorSpec(image.name, image.dtype, (image.shape[0], 3, detector_size, detector_size))
    layout = SCRFD_LAYOUTS.get(len(outputs))
    if layout is None:
        raise InterfaceError(f"{NAME}: expected 6, 9, 10 or 15 SCRFD outputs, got {len(outputs)}")
    strides, anchors, has_landmarks = layout
    if not has_landmarks:
        raise InterfaceError(
            f"{NAME}: this SCRFD export has no 5-point landmarks ({len(outputs)} outputs); "
            "alignment needs them: use a *_kps export (9 or 15 outputs)"
        )
    height, width = image.shape[2], image.shape[3]
    detections = []
    for index, spec in enumerate(outputs):
        check_float(NAME, spec)
        kind = DETECTION_KINDS[index // len(strides)]
        stride = strides[index % len(strides)]
        cells = (height // stride) * (width // stride) * anchors
        expected = f"[batch,{cells},{DETECTION_WIDTHS[kind]}] or [{cells},{DETECTION_WIDTHS[kind]}] ({kind})"
        if spec.rank not in (2, 3) or spec.shape[-1] != DETECTION_WIDTHS[kind]:
            raise fail(NAME, spec.name, expected, describe(spec))
        if spec.shape[-2] not in (None, cells):
            raise fail(NAME, spec.name, expected, describe(spec))
        detections.append(DetectorOutput(spec, kind, stride))
    return DetectorInterface(image, tuple(outputs), tuple(detections), anchors)


def load_detector(
    path: Path, detector_size: int, verify_batch: int
) -> tuple[onnx.ModelProto, DetectorInterface]:
    """Read, check, re-batch and verify a detector file, then serve it at any size where it can."""

    def surgery(it: DetectorInterface) -> dict:
        unbatched = frozenset(d.spec.name for d in it.detections if d.spec.rank == 2)
        return {"unbatched_outputs": unbatched, "input_sizes": {it.image.name: it.size}}

    def samples(it: DetectorInterface) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {it.image.name: image_inputs(it.image, it.size, INPUT_NORM, verify_batch, rng)}

    model, it = checked_model(NAME, path, lambda m: read_detector(m, detector_size), samples, surgery)
    return _served_at_any_size(model, it)


def _served_at_any_size(
    model: onnx.ModelProto, it: DetectorInterface
) -> tuple[onnx.ModelProto, DetectorInterface]:
    """The detector served at any input size when its graph computes there (SCRFD's shapes follow
    its input), checked by running it at half its height; else as it is, at its one size."""
    free = free_input_size(model, it.image.name)
    height, width = it.size
    canvas = (max(it.stride, height // 2 // it.stride * it.stride), width)
    feeds = {it.image.name: np.zeros((1, 3, *canvas), it.image.dtype)}
    try:
        results = ort.InferenceSession(free.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            [d.spec.name for d in it.detections], feeds
        )
    except Exception:  # ONNX Runtime's own error types: the graph keeps its one size
        return model, it
    anchors = [(canvas[0] // d.stride) * (canvas[1] // d.stride) * it.anchors for d in it.detections]
    if [r.shape[1] for r in results] != anchors:
        return model, it
    return free, replace(it, any_size=True)


def _served(spec: TensorSpec, it: DetectorInterface, name: str | None = None) -> TensorSpec:
    """A detector output as served (under `name` when given): [batch, anchors, C], the anchor count
    dynamic when the input size is (it follows the size)."""
    shape = (None, None, spec.shape[-1]) if it.any_size else spec.shape
    return TensorSpec(name or spec.name, spec.dtype, shape)


def detection_specs(max_faces: int) -> list[TensorSpec]:
    """face_detect's outputs: boxes, scores, landmarks of the best `max_faces` faces, and their count."""
    shapes = {"boxes": (max_faces, 4), "scores": (max_faces,), "landmarks": (max_faces, 5, 2), "count": (1,)}
    return [
        batched(name, np.int32 if name == "count" else FLOAT32, shapes[name]) for name in contract.DETECTIONS
    ]


def prepare(files: dict[str, Path], options) -> Built:
    """The detector, its letterbox preprocessing and its decoding, and the two face_detect ensembles."""
    model, it = load_detector(files[NAME], options.detector_size, options.verify_batch)
    batching = options.batching.get(NAME, ROLE.batching)
    quick = Batching(batching.max_batch_size)  # pre/post graphs: batch whatever is queued, no waiting
    opset = graphs.opset_for(model)
    height, width = it.canvas
    image = TensorSpec(it.image.name, it.image.dtype, (None, 3, height, width))
    raw = [_served(s, it) for s in it.outputs]
    reference = {image.name: it.image.shape[1:]}  # warm-up at the reference size
    pre = graphs.image_to_tensor(
        it.canvas, INPUT_NORM, it.image.dtype, "image", "tensor", opset, "canvas_size"
    )
    canvas_size = [batched("canvas_size", np.int64, (2,))]
    post = graphs.detections_to_faces(it.detections, it.size, it.anchors, options.max_faces, opset)
    entries = [
        Entry(NAME, model, [image], raw, batching, warmup=options.warmup, warmup_dims=reference),
        Entry(
            f"{NAME}_preprocess",
            pre,
            [batched("image", UINT8, (height, width, 3))],
            [batched("tensor", it.image.dtype, (3, height, width)), *canvas_size],
            quick,
        ),
        Entry(
            f"{NAME}_postprocess",
            post,
            [_served(d.spec, it, d.ensemble_name) for d in it.detections]
            + [batched(name, FLOAT32, (1,)) for name in THRESHOLDS]
            + canvas_size,
            detection_specs(options.max_faces),
            Batching(0),  # unbatched: the onnxruntime backend takes optional inputs only so
            optional=frozenset(DETECTION_OPTIONS),
            tensorrt=False,
        ),
    ]
    frame = batched(contract.IMAGE, UINT8, (height, width, 3))
    sized = Step(
        f"{NAME}_preprocess",
        {"image": contract.IMAGE},
        {"tensor": "detector_input", "canvas_size": "canvas_size"},
    )
    detector = Step(
        NAME, {it.image.name: "detector_input"}, {d.spec.name: d.ensemble_name for d in it.detections}
    )
    postprocess = Step(
        f"{NAME}_postprocess",
        {d.ensemble_name: d.ensemble_name for d in it.detections}
        | {name: name for name in DETECTION_OPTIONS},
        {name: name for name in contract.DETECTIONS},
    )
    # what clients letterbox to: frames fit in the reference size; with any size accepted, the
    # canvas may stop at the frame's content rounded up to a multiple of the stride
    stated = contract.DetectorParameters(it.size[1], it.size[0], it.stride, it.any_size)
    parameters = tuple(stated.to_config().items())
    warmup = ((contract.IMAGE, (*it.size, 3)),)  # a canvas of the reference size
    unsized = Step(f"{NAME}_preprocess", {"image": contract.IMAGE}, {"tensor": "detector_input"})
    ensembles = [
        Ensemble(
            contract.DETECT,
            [frame] + [batched(name, FLOAT32, (1,)) for name in THRESHOLDS],
            detection_specs(options.max_faces),
            [sized, detector, postprocess],
            batching,
            frozenset(THRESHOLDS),
            parameters=parameters,
            warmup_dims=warmup,
        ),
        Ensemble(
            contract.DETECT_RAW,
            [frame],
            [_served(d.spec, it, d.ensemble_name) for d in it.detections],
            [unsized, detector],
            batching,
            parameters=parameters,
            warmup_dims=warmup,
        ),
    ]
    return Built(entries, ensembles)


def write_twin(directory: Path, family: str | None = None) -> dict[str, Path]:
    """A detector twin that finds no face (tests give the real SCRFD instead)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "detector_twin.onnx"
    onnx.save(twins.detector(()), str(path))
    return {NAME: path}


ROLE = Role(
    NAME,
    required=True,
    ensembles=(contract.DETECT, contract.DETECT_RAW),
    prepare=prepare,
    twin=write_twin,
    batching=Batching(16, (4, 8, 16), 2000),
    help="the face detector (SCRFD, with 5-point landmarks)",
)
