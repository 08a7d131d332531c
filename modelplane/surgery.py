"""Graph surgery that gives a model a dynamic batch axis, and the check that it is still right.

Many public exports fix the batch to 1: in their declared inputs and outputs, in Reshape targets
computed at export time, or (SCRFD's "unbatched" exports) by flattening the batch into the first
output axis. Triton's dynamic batching needs a real batch axis, so each of those is rewritten,
and the result is only accepted when batch-N outputs equal N stacked batch-1 outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from modelplane.errors import BatchAxisError

BATCH = "batch"
RELATIVE_TOLERANCE = 1e-4


def make_batch_dynamic(
    model: onnx.ModelProto,
    *,
    unbatched_outputs: frozenset[str] = frozenset(),
    input_sizes: dict[str, tuple[int, int]] | None = None,
) -> onnx.ModelProto:
    """Return a copy of `model` whose inputs and outputs lead with a dynamic batch axis.

    `unbatched_outputs` name outputs exported without a batch axis ([A, C] for the whole batch):
    they are reshaped to [batch, A, C]. `input_sizes` fixes dynamic H and W of NCHW inputs.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    initializer_names = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializer_names]
    fixed_batches = {d.dim_value for v in inputs for d in v.type.tensor_type.shape.dim[:1] if d.dim_value > 0}

    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        _set_dynamic(dims[0])
        if input_sizes and value.name in input_sizes and len(dims) == 4:
            for dim, size in zip(dims[2:], input_sizes[value.name], strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
    for fixed in fixed_batches:
        _free_reshape_targets(graph, fixed, {v.name for v in inputs})
    for value in graph.output:
        if value.name in unbatched_outputs:
            _add_batch_axis(graph, value, inputs[0].name)
        else:
            _set_dynamic(value.type.tensor_type.shape.dim[0])
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def free_input_size(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of `model` whose NCHW input `name` takes any height and width: its H and W, and every
    output's axes between the batch and the last, become dynamic (SCRFD's anchor counts follow the
    input size). Whether the graph really computes at another size is for the caller to check."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    (value,) = (v for v in graph.input if v.name == name)
    for dim, label in zip(value.type.tensor_type.shape.dim[2:], ("height", "width"), strict=True):
        dim.ClearField("dim_value")
        dim.dim_param = label
    for output in graph.output:
        for axis, dim in enumerate(output.type.tensor_type.shape.dim[1:-1], start=1):
            dim.ClearField("dim_value")
            dim.dim_param = f"{output.name}_axis{axis}"
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _set_dynamic(dim: onnx.TensorShapeProto.Dimension) -> None:
    dim.ClearField("dim_value")
    dim.dim_param = BATCH


def _batch_dependent(graph: onnx.GraphProto, inputs: set[str]) -> set[str]:
    """Names of every tensor computed from the graph inputs (nodes are topologically sorted)."""
    tainted = set(inputs)
    for node in graph.node:
        if any(name in tainted for name in node.input):
            tainted.update(node.output)
    return tainted


def _free_reshape_targets(graph: onnx.GraphProto, fixed: int, inputs: set[str]) -> None:
    """Rewrite constant Reshape targets whose leading value is the export's fixed batch size.

    The leading value becomes -1 (or 0, "copy the input's batch", when -1 is already taken).
    Each rewritten target gets its own initializer so other users of the constant are untouched.
    """
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    tainted = _batch_dependent(graph, inputs)
    for index, node in enumerate(graph.node):
        if node.op_type != "Reshape" or node.input[0] not in tainted or node.input[1] not in constants:
            continue
        target = constants[node.input[1]].astype(np.int64).copy()
        if target.ndim != 1 or target.size == 0 or target[0] != fixed:
            continue
        target[0] = 0 if -1 in target[1:] else -1
        name = f"{node.input[1]}__dynamic_batch_{index}"
        _add_initializers(graph, [numpy_helper.from_array(target, name)])
        node.input[1] = name


def _add_initializers(graph: onnx.GraphProto, tensors: list[onnx.TensorProto]) -> None:
    """Add initializers before the last one, which stays last (inswapper keeps its emap there)."""
    existing = list(graph.initializer)
    del graph.initializer[:]
    graph.initializer.extend(existing[:-1] + tensors + existing[-1:])


def _add_batch_axis(graph: onnx.GraphProto, value: onnx.ValueInfoProto, batch_source: str) -> None:
    """Reshape an output flattened over the batch, [B*A, C...], into [B, A, C...]."""
    produced = f"{value.name}__flat"
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == value.name:
                node.output[i] = produced
    tail = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
    prefix = f"{value.name}__batch_axis"
    _add_initializers(
        graph,
        [
            numpy_helper.from_array(np.array([0], np.int64), f"{prefix}_start"),
            numpy_helper.from_array(np.array([1], np.int64), f"{prefix}_end"),
            numpy_helper.from_array(np.array([-1, *tail], np.int64), f"{prefix}_tail"),
        ],
    )
    graph.node.extend(
        [
            helper.make_node("Shape", [batch_source], [f"{prefix}_shape"]),
            helper.make_node(
                "Slice", [f"{prefix}_shape", f"{prefix}_start", f"{prefix}_end"], [f"{prefix}_n"]
            ),
            helper.make_node("Concat", [f"{prefix}_n", f"{prefix}_tail"], [f"{prefix}_target"], axis=0),
            helper.make_node("Reshape", [produced, f"{prefix}_target"], [value.name]),
        ]
    )
    dims = value.type.tensor_type.shape.dim
    old = [d.dim_value for d in dims]
    del dims[:]
    dims.add().dim_param = BATCH
    for size in old:
        dim = dims.add()
        if size > 0:
            dim.dim_value = size


def verify_batch_axis(model: onnx.ModelProto, feeds: dict[str, np.ndarray], role: str) -> float:
    """Run `feeds` (batch N) once as a batch and N times one by one; return the worst relative error.

    Raises BatchAxisError naming the role and output when they differ by more than 1e-4.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # unused initializers (inswapper's emap) are expected, not news
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    batch = next(iter(feeds.values())).shape[0]
    together = session.run(names, feeds)
    singles = [session.run(names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(batch)]
    worst = 0.0
    for index, name in enumerate(names):
        expected = np.concatenate([single[index] for single in singles]).astype(np.float64)
        got = together[index].astype(np.float64)
        if got.shape != expected.shape:
            raise BatchAxisError(
                f"{role}: output {name!r} has shape {list(got.shape)} at batch {batch}, "
                f"expected {list(expected.shape)} (the batch axis is not dynamic)"
            )
        error = float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), 1e-12))
        if not error <= RELATIVE_TOLERANCE:
            raise BatchAxisError(
                f"{role}: output {name!r} at batch {batch} differs from {batch} batch-1 runs "
                f"(relative max difference {error:.2e} > {RELATIVE_TOLERANCE:.0e})"
            )
        worst = max(worst, error)
    return worst
