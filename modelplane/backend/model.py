"""Triton python-based backend `onnxruntime_python`: a model directory's model.onnx on ONNX Runtime.

It serves the CPU rendering of the repository (configs/cpu.pbtxt) where Triton has no onnxruntime
backend. All requests of a dynamic batch run as one ONNX Runtime call, so batching pays off here
as it does on the GPU. It honours the onnxruntime backend's `intra_op_thread_count` parameter.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
        options.log_severity_level = 3
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        feeds = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            for request in requests
        ]
        sizes = [len(feed[self.inputs[0]]) for feed in feeds]
        batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.inputs}
        try:
            results = self.session.run(self.outputs, batch)
        except Exception as error:  # ONNX Runtime raises its own exception types; each becomes a reply
            failure = pb_utils.TritonError(f"onnxruntime: {error}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=failure) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size]))
                for name, result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
