"""Triton python-based backend `onnxruntime_python`: a model directory's model.onnx on ONNX Runtime.

It serves the CPU rendering of the repository (configs/cpu.pbtxt) where Triton has no onnxruntime
backend. All requests of a dynamic batch run as one ONNX Runtime call, so batching pays off here
as it does on the GPU. With the `ensemble_steps` parameter the model is an ensemble's steps fused
into one graph, so no tensor crosses between processes inside it. Threads: the onnxruntime
backend's `intra_op_thread_count` / `inter_op_thread_count` parameters when given, else this
machine's cores shared among the model's instances; idle threads sleep instead of spinning, since
several models' processes share the cores.
"""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
from onnx import compose, helper, version_converter


def _default_opset(model):
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def fuse(steps, directory, output_names):
    """One serialized model from an ensemble's steps: each step's names get a prefix of their own,
    and Identity nodes connect the ensemble's tensors to them (ONNX Runtime removes those). Older
    steps are converted to the newest step's opset; an input's default (an initializer) moves with it."""
    models = [onnx.load(os.path.join(directory, step["model"])) for step in steps]
    opset = max(_default_opset(m) for m in models)
    nodes, initializers, functions, inputs, outputs = [], [], [], {}, {}
    imports = {}
    for index, (step, model) in enumerate(zip(steps, models, strict=True)):
        if _default_opset(model) < opset:
            model = version_converter.convert_version(model, opset)
        prefix = f"step{index}/"
        graph = compose.add_prefix(model, prefix).graph
        defaults = {i.name: i for i in graph.initializer}
        values = {v.name: v for v in list(graph.input) + list(graph.output)}
        for own, shared in step["inputs"].items():
            if shared not in outputs and shared not in inputs:  # a tensor the ensemble's client sends
                inputs[shared] = helper.make_value_info(shared, values[prefix + own].type)
                if prefix + own in defaults:
                    default = defaults.pop(prefix + own)
                    default.name = shared
                    initializers.append(default)
            defaults.pop(prefix + own, None)
            nodes.append(helper.make_node("Identity", [shared], [prefix + own]))
        nodes.extend(graph.node)
        initializers.extend(defaults.values())
        functions.extend(model.functions)
        for own, shared in step["outputs"].items():
            nodes.append(helper.make_node("Identity", [prefix + own], [shared]))
            outputs[shared] = helper.make_value_info(shared, values[prefix + own].type)
        for entry in model.opset_import:
            imports[entry.domain] = max(imports.get(entry.domain, 0), entry.version)
    graph = helper.make_graph(
        nodes, "fused", list(inputs.values()), [outputs[name] for name in output_names], initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in imports.items()],
        functions=functions,
    )
    model.ir_version = max(m.ir_version for m in models)
    return model.SerializeToString()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        cores = len(os.sched_getaffinity(0))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0")) or max(
            1, cores // instances
        )
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", "0"))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]
        if "ensemble_steps" in parameters:
            model = fuse(json.loads(parameters["ensemble_steps"]), args["model_repository"], self.outputs)
        else:
            filename = config.get("default_model_filename") or "model.onnx"
            model = os.path.join(args["model_repository"], args["model_version"], filename)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        """Run the requests as one batch per set of inputs they carry (optional inputs may be absent)
        and per shape (a detector takes frames of any size)."""
        feeds = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.inputs}
            feeds.append({name: tensor.as_numpy() for name, tensor in tensors.items() if tensor is not None})
        responses = [None] * len(requests)
        groups = {}
        for index, feed in enumerate(feeds):
            shapes = tuple((name, value.shape[1:]) for name, value in feed.items())
            groups.setdefault(shapes, []).append(index)
        for key, members in groups.items():
            names = [name for name, _ in key]
            for index, response in zip(members, self._run([feeds[i] for i in members], names), strict=True):
                responses[index] = response
        return responses

    def _run(self, feeds, names):
        sizes = [len(feed[names[0]]) for feed in feeds]
        batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in names}
        try:
            results = self.session.run(self.outputs, batch)
        except Exception as error:  # ONNX Runtime raises its own exception types; each becomes a reply
            failure = pb_utils.TritonError(f"onnxruntime: {error}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=failure) for _ in feeds]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]))
                for name, result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
