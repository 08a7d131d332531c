"""Preparation: turn the four role models into a Triton model repository.

For each role the ONNX file is checked against its contract, given a dynamic batch axis, verified
(batch-N equals N stacked batch-1 runs) and written with both configuration renderings; then the
pre/post-processing graphs and the ensembles that chain them are added:

    face_detect   image uint8 [B,H,W,3] BGR, letterboxed;   -> boxes [B,K,4], scores [B,K], landmarks
                  optional score_threshold, iou_threshold      [B,K,5,2], count [B,1]: the best K faces,
                  [B,1]                                        best first, in input pixels
    face_detect_raw  the same image                        -> scores_S, boxes_S, landmarks_S per stride S
    face_embed    crop uint8 [B,112,112,3] BGR, aligned    -> embedding float32 [B,512], unit length
                                                          and raw_embedding float32 [B,512], before it
    swap_latent   embedding float32 [B,512]                -> latent [B,512], the swapper's source input
    face_swap     crop uint8 [B,128,128,3] BGR + latent    -> swapped uint8 [B,128,128,3] BGR
    face_enhance  crop uint8 [B,512,512,3] BGR, FFHQ-aligned -> enhanced uint8 [B,512,512,3] BGR

The sizes, templates and source inputs above are the default families' (inswapper, GFPGAN); each
swapper and enhancer is prepared as its family (modelplane.families), which its ensemble's config
states as parameters. The optional mask roles (occluder, parser, landmarker) add face_occlusion,
face_parse and face_landmark when their files are given: see modelplane.mask_roles.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from modelplane import MASK_ROLES, ROLES, configs, graphs
from modelplane.configs import Batching, Ensemble, Rendering, Step, TensorSpec
from modelplane.errors import ModelPlaneError, PreparationError
from modelplane.families import (
    CONVERTER,
    CONVERTER_ROLE,
    CONVERTER_UNIT,
    EMAP,
    EMBEDDING_DIM,
    FAMILY_ROLES,
    Family,
    family_of,
    read_converter,
    read_family_interface,
)
from modelplane.mask_roles import load_mask_model, mask_ensemble, mask_entries
from modelplane.roles import Interface, Normalization, read_interface, sample_inputs
from modelplane.surgery import free_input_size, make_batch_dynamic, verify_batch_axis

STAMP = ".prepared.json"
UINT8 = np.dtype(np.uint8)
FLOAT32 = np.dtype(np.float32)
THRESHOLDS = ("score_threshold", "iou_threshold")  # face_detect's optional inputs
DETECTION_OPTIONS = (*THRESHOLDS, "canvas_size")  # detector_postprocess's: defaults in the graph
UNIT_PIXELS = Normalization(0.0, 255.0)  # an image tensor of RGB values in 0..1


@dataclass(frozen=True)
class Options:
    detector_size: int = 640  # for detectors whose input size is dynamic
    verify_batch: int = 3  # batch size of the batch-axis verification
    tensorrt: bool = False  # TensorRT FP16 accelerator in the GPU rendering
    gpu_instances: int = 1
    cpu_instances: int = 1
    warmup: bool = True
    max_faces: int = 256  # faces face_detect returns per image (60 bytes each)
    swapper_family: str = "inswapper"  # modelplane.families
    enhancer_family: str = "gfpgan"
    batching: dict[str, Batching] = field(
        default_factory=lambda: {
            "detector": Batching(16, (4, 8, 16), 2000),
            "recognizer": Batching(64, (8, 16, 32, 64), 1000),
            "swapper": Batching(64, (8, 16, 32, 64), 1000),
            "enhancer": Batching(16, (4, 8, 16), 2000),
        }
    )


@dataclass
class _Entry:
    """One model directory to write: an ONNX graph and its tensors."""

    name: str
    model: onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batching: Batching
    warmup: bool = False
    optional: frozenset[str] = frozenset()  # inputs with defaults inside the graph
    tensorrt: bool = True  # whether the TensorRT option applies (not to control flow and NMS)
    warmup_dims: dict[str, tuple[int, ...]] | None = None  # see configs.model_config


def _spec(name: str, dtype, shape) -> TensorSpec:
    return TensorSpec(name, np.dtype(dtype), (None, *shape))


def read_model(role: str, path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except (OSError, ValueError, DecodeError) as error:
        raise PreparationError(f"{role}: cannot read {path} as an ONNX model ({error})") from error


def load_role_model(role: str, path: Path, options: Options) -> tuple[onnx.ModelProto, Interface]:
    """Read, check, re-batch and verify one role model."""
    model = read_model(role, path)
    try:
        interface = _read(role, model, options)
        unbatched = frozenset(d.spec.name for d in interface.detections if d.spec.rank == 2)
        sizes = {interface.image.name: interface.size} if role == "detector" else None
        model = make_batch_dynamic(model, unbatched_outputs=unbatched, input_sizes=sizes)
        interface = _read(role, model, options)
        verify_batch_axis(model, sample_inputs(interface, options.verify_batch), role)
        if role == "detector":
            model, interface = _served_at_any_size(model, interface)
    except (ModelPlaneError, ValueError) as error:  # ValueError: ONNX's word on a malformed graph
        raise PreparationError(f"{error} (file {path})") from error
    return model, interface


def _read(role: str, model: onnx.ModelProto, options: Options) -> Interface:
    """The role's contract, and for swappers and enhancers their declared family's."""
    if role in FAMILY_ROLES:
        return read_family_interface(family_of(role, options), model)
    return read_interface(role, model, options.detector_size)


def load_converter(models: dict[str, Path], options: Options) -> tuple[onnx.ModelProto, Interface]:
    """The swapper family's converter model (embedding -> source vector), re-batched and verified."""
    family = family_of("swapper", options)
    path = models.get(CONVERTER_ROLE)
    if path is None:
        raise PreparationError(f"swapper: family {family.name} needs its converter model (--converter PATH)")
    try:
        model = onnx.load(str(path))
        model = make_batch_dynamic(model)
        interface = read_converter(family, model)
        feeds = {
            interface.image.name: np.random.default_rng(0)
            .standard_normal((options.verify_batch, 512))
            .astype(interface.image.dtype)
        }
        verify_batch_axis(model, feeds, CONVERTER_ROLE)
    except (ModelPlaneError, ValueError, DecodeError, OSError) as error:
        raise PreparationError(f"{error} (file {path})") from error
    return model, interface


def _role_entries(
    role: str, model: onnx.ModelProto, it: Interface, options: Options, converter: Interface | None = None
) -> list[_Entry]:
    """The role model itself plus its pre/post-processing graphs, built at the model's opset."""
    batching = options.batching[role]
    quick = Batching(batching.max_batch_size)  # pre/post graphs: batch whatever is queued, no waiting
    opset = graphs.opset_for(model)
    image = TensorSpec(it.image.name, it.image.dtype, (None, 3, *it.canvas))
    served = [image, *it.inputs[1:]], [_served_detection(s, it) for s in it.outputs]
    reference = {image.name: it.image.shape[1:]}  # warm-up at the reference size
    entries = [_Entry(role, model, *served, batching, warmup=options.warmup, warmup_dims=reference)]
    height, width = it.canvas
    detector = role == "detector"
    size_name = "canvas_size" if detector else None
    pre = graphs.image_to_tensor(
        it.canvas, it.input_norm, it.image.dtype, "image", "tensor", opset, size_name
    )
    canvas_size = [_spec("canvas_size", np.int64, (2,))] if detector else []
    entries.append(
        _Entry(
            f"{role}_preprocess",
            pre,
            [_spec("image", UINT8, (height, width, 3))],
            [_spec("tensor", it.image.dtype, (3, height, width)), *canvas_size],
            quick,
        )
    )
    output = it.outputs[0]
    if detector:
        post = graphs.detections_to_faces(it.detections, it.size, it.anchors, options.max_faces, opset)
        entries.append(
            _Entry(
                f"{role}_postprocess",
                post,
                [_served_detection(d.spec, it, d.ensemble_name) for d in it.detections]
                + [_spec(name, FLOAT32, (1,)) for name in THRESHOLDS]
                + canvas_size,
                _detection_specs(options.max_faces),
                Batching(0),  # unbatched: the onnxruntime backend takes optional inputs only so
                optional=frozenset(DETECTION_OPTIONS),
                tensorrt=False,
            )
        )
    if role == "recognizer":
        dim = output.shape[1]
        post = graphs.l2_normalize(dim, output.dtype, "tensor", "embedding", opset, "raw_embedding")
        entries.append(
            _Entry(
                f"{role}_postprocess",
                post,
                [_spec("tensor", output.dtype, (dim,))],
                [_spec("embedding", FLOAT32, (dim,)), _spec("raw_embedding", FLOAT32, (dim,))],
                quick,
            )
        )
    if it.output_norm is not None:
        post = graphs.tensor_to_image(it.size, it.output_norm, output.dtype, "tensor", "image", opset)
        entries.append(
            _Entry(
                f"{role}_postprocess",
                post,
                [_spec("tensor", output.dtype, (3, height, width))],
                [_spec("image", UINT8, (height, width, 3))],
                quick,
            )
        )
    if role == "swapper":
        entries.extend(swapper_source_entries(family_of(role, options), it, opset, quick, converter))
    if it.weight is not None:
        graph = graphs.weight_to_tensor(it.weight.dtype, "weight", "tensor", opset)
        entries.append(
            _Entry(
                f"{role}_weight",
                graph,
                [_spec("weight", FLOAT32, (1,))],
                [_spec("tensor", it.weight.dtype, ())],
                quick,
            )
        )
    return entries


def swapper_source_entries(
    family: Family, it: Interface, opset: int, batching: Batching, converter: Interface | None
) -> list[_Entry]:
    """The graphs that form the swapper's source input: `swap_latent` (or, with a converter, its
    last step `swap_source`) from an embedding, or `swapper_source_preprocess` for a source crop."""
    if it.latent.rank == 4:
        size = it.latent.shape[2]
        pre = graphs.image_to_tensor((size, size), UNIT_PIXELS, it.latent.dtype, "image", "tensor", opset)
        # swap_latent stays, as the unit embedding, for clients and readiness checks that expect it
        unit = graphs.source_vector(EMBEDDING_DIM, FLOAT32, FLOAT32, True, "embedding", "latent", opset)
        vector = [_spec("embedding", FLOAT32, (EMBEDDING_DIM,))]
        return [
            _Entry(
                "swapper_source_preprocess",
                pre,
                [_spec("image", UINT8, (size, size, 3))],
                [_spec("tensor", it.latent.dtype, (3, size, size))],
                batching,
            ),
            _Entry("swap_latent", unit, vector, [_spec("latent", FLOAT32, (EMBEDDING_DIM,))], batching),
        ]
    dim = it.latent.shape[1]
    latent = [_spec("latent", it.latent.dtype, (dim,))]
    if family.source == EMAP:
        graph = graphs.embedding_to_latent(it.emap, it.latent.dtype, "embedding", "latent", opset)
        return [_Entry("swap_latent", graph, [_spec("embedding", FLOAT32, (dim,))], latent, batching)]
    if converter is None:
        unit = graphs.source_vector(dim, FLOAT32, it.latent.dtype, True, "embedding", "latent", opset)
        return [_Entry("swap_latent", unit, [_spec("embedding", FLOAT32, (dim,))], latent, batching)]
    output = converter.outputs[0]
    unit = family.source == CONVERTER_UNIT
    graph = graphs.source_vector(dim, output.dtype, it.latent.dtype, unit, "vector", "latent", opset)
    return [_Entry("swap_source", graph, [_spec("vector", output.dtype, (dim,))], latent, batching)]


def _served_detection(spec: TensorSpec, it: Interface, name: str | None = None) -> TensorSpec:
    """A detector output as served (under `name` when given): [batch, anchors, C], the anchor count
    dynamic when the input size is (it follows the size)."""
    shape = (None, None, spec.shape[-1]) if it.any_size else spec.shape
    return TensorSpec(name or spec.name, spec.dtype, shape)


def _served_at_any_size(model: onnx.ModelProto, it: Interface) -> tuple[onnx.ModelProto, Interface]:
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


def _detection_specs(max_faces: int) -> list[TensorSpec]:
    """face_detect's outputs: boxes, scores, landmarks of the best `max_faces` faces, and their count."""
    shapes = {"boxes": (max_faces, 4), "scores": (max_faces,), "landmarks": (max_faces, 5, 2), "count": (1,)}
    return [_spec(name, np.int32 if name == "count" else FLOAT32, shapes[name]) for name in shapes]


def _ensembles(interfaces: dict[str, Interface], options: Options, names: dict[str, str]) -> list[Ensemble]:
    result = []
    det = interfaces.get("detector")
    if det is not None:
        height, width = det.canvas
        image = _spec("image", UINT8, (height, width, 3))
        sized = {"tensor": "detector_input", "canvas_size": "canvas_size"}
        preprocess = Step("detector_preprocess", {"image": "image"}, sized)
        detector = Step(
            "detector",
            {det.image.name: "detector_input"},
            {d.spec.name: d.ensemble_name for d in det.detections},
        )
        raw = {d.ensemble_name: d.ensemble_name for d in det.detections}
        postprocess = Step(
            "detector_postprocess",
            raw | {name: name for name in DETECTION_OPTIONS},
            {name: name for name in graphs.DETECTION_OUTPUTS},
        )
        # what clients letterbox to: frames fit in the reference size; with any size accepted, the
        # canvas may stop at the frame's content rounded up to a multiple of the stride
        parameters = (("detector_size", f"{det.size[1]}x{det.size[0]}"), ("stride", str(det.stride)))
        parameters += (("any_size", str(det.any_size).lower()),)
        warmup = (("image", (*det.size, 3)),)  # a canvas of the reference size
        result.append(
            Ensemble(
                "face_detect",
                [image] + [_spec(name, FLOAT32, (1,)) for name in THRESHOLDS],
                _detection_specs(options.max_faces),
                [preprocess, detector, postprocess],
                options.batching["detector"],
                frozenset(THRESHOLDS),
                parameters=parameters,
                warmup_dims=warmup,
            )
        )
        unsized = Step("detector_preprocess", {"image": "image"}, {"tensor": "detector_input"})
        result.append(
            Ensemble(
                "face_detect_raw",
                [image],
                [_served_detection(d.spec, det, d.ensemble_name) for d in det.detections],
                [unsized, detector],
                options.batching["detector"],
                parameters=parameters,
                warmup_dims=warmup,
            )
        )
    rec = interfaces.get("recognizer")
    if rec is not None:
        size, dim = rec.size[0], rec.outputs[0].shape[1]
        result.append(
            Ensemble(
                "face_embed",
                [_spec("crop", UINT8, (size, size, 3))],
                [_spec("embedding", FLOAT32, (dim,)), _spec("raw_embedding", FLOAT32, (dim,))],
                [
                    Step("recognizer_preprocess", {"image": "crop"}, {"tensor": "recognizer_input"}),
                    Step("recognizer", {rec.image.name: "recognizer_input"}, {rec.outputs[0].name: "raw"}),
                    Step(
                        "recognizer_postprocess",
                        {"tensor": "raw"},
                        {"embedding": "embedding", "raw_embedding": "raw_embedding"},
                    ),
                ],
                options.batching["recognizer"],
            )
        )
    converter = interfaces.get(CONVERTER_ROLE)
    if converter is not None and "swapper" in interfaces:
        dim = converter.image.shape[1]
        latent = interfaces["swapper"].latent
        result.append(
            Ensemble(
                "swap_latent",
                [_spec("embedding", FLOAT32, (dim,))],
                [_spec("latent", latent.dtype, (dim,))],
                [
                    Step(
                        "swap_converter",
                        {converter.image.name: "embedding"},
                        {converter.outputs[0].name: "vector"},
                    ),
                    Step("swap_source", {"vector": "vector"}, {"latent": "latent"}),
                ],
                options.batching["swapper"],
            )
        )
    for role, ensemble, output in (
        ("swapper", "face_swap", "swapped"),
        ("enhancer", "face_enhance", "enhanced"),
    ):
        it = interfaces.get(role)
        if it is None:
            continue
        family = family_of(role, options)
        size = it.size[0]
        model_inputs = {it.image.name: f"{role}_input"}
        inputs = [_spec("crop", UINT8, (size, size, 3))]
        steps = [Step(f"{role}_preprocess", {"image": "crop"}, {"tensor": f"{role}_input"})]
        if it.latent is not None and it.latent.rank == 4:  # an aligned source crop, uint8 BGR
            source_size = it.latent.shape[2]
            model_inputs[it.latent.name] = "source_input"
            inputs.append(_spec("source", UINT8, (source_size, source_size, 3)))
            steps.append(Step(f"{role}_source_preprocess", {"image": "source"}, {"tensor": "source_input"}))
        elif it.latent is not None:
            model_inputs[it.latent.name] = "latent"
            inputs.append(_spec("latent", it.latent.dtype, (it.latent.shape[1],)))
        if it.weight is not None:
            model_inputs[it.weight.name] = "weight_input"
            inputs.append(_spec("weight", FLOAT32, (1,)))
            steps.append(Step(f"{role}_weight", {"weight": "weight"}, {"tensor": "weight_input"}))
        steps += [
            Step(role, model_inputs, {it.outputs[0].name: f"{role}_output"}),
            Step(f"{role}_postprocess", {"tensor": f"{role}_output"}, {"image": output}),
        ]
        found = family.parameters() | {"model": names[role]}
        if it.latent is not None and it.latent.rank == 2:
            found["latent_model"] = "swap_latent"
        parameters = tuple(sorted(found.items()))
        batching = options.batching[role]
        result.append(
            Ensemble(
                ensemble,
                inputs,
                [_spec(output, UINT8, (size, size, 3))],
                steps,
                batching,
                parameters=parameters,
            )
        )
    return result


def _renderings(options: Options, repository: Path) -> tuple[Rendering, Rendering]:
    """The GPU and CPU renderings; TensorRT engines are cached beside the repository, on its volume."""
    cache = str(repository.resolve().parent / "trt_cache")
    gpu = Rendering("", configs.GPU.backend, configs.GPU.kind, options.gpu_instances, options.tensorrt, cache)
    cpu = Rendering(configs.CPU.name, configs.CPU.backend, configs.CPU.kind, options.cpu_instances)
    return gpu, cpu


def _write_config(directory: Path, config, rendering: Rendering) -> None:
    path = (
        directory / "config.pbtxt"
        if not rendering.name
        else directory / "configs" / f"{rendering.name}.pbtxt"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(configs.to_text(config))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_digest() -> str:
    """SHA-256 of the model plane's code (graphs, configs, the backend...): a repository prepared by
    other code, an older release's, is prepared again rather than served with stale graphs."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("*.py"), *root.glob("backend/*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def stamp_for(models: dict[str, Path], options: Options, twins: bool = False) -> dict:
    """What a repository was prepared from: the sources' SHA-256, the options, twins or not, and the
    model plane's code."""
    return {
        "sources": {role: sha256_of(path) for role, path in sorted(models.items())},
        "options": json.loads(json.dumps(asdict(options), default=list)),
        "twins": twins,
        "code": code_digest(),
    }


def read_stamp(repository: Path) -> dict | None:
    """The stamp of a prepared repository, or None if it was never (completely) prepared."""
    try:
        return json.loads((repository / STAMP).read_text())
    except (OSError, ValueError):
        return None


def prepare_repository(
    models: dict[str, Path], repository: Path, options: Options = Options(), twins: bool = False
) -> list[str]:
    """Write the model repository for the given role files; returns the model names written.

    Models are built in a staging folder inside `repository` and moved into place only when every
    role passed, so a failed preparation leaves the previous repository as it was.
    """
    unknown = set(models) - set(ROLES) - {CONVERTER_ROLE} - set(MASK_ROLES)
    if unknown:
        raise PreparationError(f"unknown roles: {', '.join(sorted(unknown))}")
    repository.mkdir(parents=True, exist_ok=True)
    stage = repository / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    interfaces, entries = {}, []
    if "swapper" in models and family_of("swapper", options).source in (CONVERTER, CONVERTER_UNIT):
        converter, interfaces[CONVERTER_ROLE] = load_converter(models, options)
        entries.append(
            _Entry(
                "swap_converter",
                converter,
                [interfaces[CONVERTER_ROLE].image],
                list(interfaces[CONVERTER_ROLE].outputs),
                Batching(options.batching["swapper"].max_batch_size),
            )
        )
    for role in ROLES:
        if role in models:
            model, interfaces[role] = load_role_model(role, Path(models[role]), options)
            entries.extend(
                _role_entries(role, model, interfaces[role], options, interfaces.get(CONVERTER_ROLE))
            )
    names = {role: Path(path).stem for role, path in models.items()}
    ensembles = _ensembles(interfaces, options, names)
    for role in MASK_ROLES:  # optional: each adds its ensemble
        if role in models:
            model = read_model(role, Path(models[role]))
            model, interface = load_mask_model(role, model, models[role], options.verify_batch)
            fields = mask_entries(role, model, interface, options.warmup)
            entries.extend(_Entry(**entry) for entry in fields)
            ensembles.append(mask_ensemble(role, interface))
    try:
        gpu, cpu = _renderings(options, repository)
        for rendering in (gpu, cpu):
            for entry in entries:
                config = configs.model_config(
                    entry.name,
                    entry.inputs,
                    entry.outputs,
                    entry.batching,
                    rendering,
                    entry.warmup,
                    entry.optional,
                    entry.tensorrt,
                    entry.warmup_dims,
                )
                _write_config(stage / entry.name, config, rendering)
        for ensemble in ensembles:
            _write_config(stage / ensemble.name, configs.ensemble_config(ensemble), gpu)
            _write_config(stage / ensemble.name, configs.fused_config(ensemble, cpu, options.warmup), cpu)
            (stage / ensemble.name / configs.VERSION).mkdir()
        for entry in entries:
            (stage / entry.name / configs.VERSION).mkdir(parents=True, exist_ok=True)
            onnx.save(entry.model, str(stage / entry.name / configs.VERSION / "model.onnx"))
        names = sorted(p.name for p in stage.iterdir())
        (repository / STAMP).unlink(missing_ok=True)
        for name in names:
            target = repository / name
            if target.exists():
                shutil.rmtree(target)
            (stage / name).rename(target)
        (repository / STAMP).write_text(json.dumps(stamp_for(models, options, twins), indent=2) + "\n")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return names
