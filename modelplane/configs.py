"""Triton model configurations, built through Triton's own `model_config` protobuf schema.

Every tensor name, shape and type comes from the ONNX file it describes. Each model gets two
renderings of the same interface and batching: `config.pbtxt` for the onnxruntime backend on GPU
instances (production), and `configs/cpu.pbtxt` for the python-based `onnxruntime_python` backend
on CPU instances (tests, laptops), picked with `tritonserver --model-config-name=cpu`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelplane.roles import TensorSpec

CPU_RENDERING = "cpu"
CPU_BACKEND = "onnxruntime_python"

_TRITON_TYPES = {
    np.dtype(np.uint8): mc.TYPE_UINT8,
    np.dtype(np.int32): mc.TYPE_INT32,
    np.dtype(np.int64): mc.TYPE_INT64,
    np.dtype(np.float16): mc.TYPE_FP16,
    np.dtype(np.float32): mc.TYPE_FP32,
}


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of one model: the largest batch, sizes to aim for, how long to wait."""

    max_batch_size: int
    preferred: tuple[int, ...] = ()
    queue_delay_us: int = 0


@dataclass(frozen=True)
class Rendering:
    """Where a model runs: backend, instance kind and count, optional TensorRT FP16."""

    name: str  # "" for config.pbtxt, else configs/<name>.pbtxt
    backend: str
    kind: int
    instances: int = 1
    tensorrt: bool = False
    trt_cache: str = "/tmp/trt_cache"  # TensorRT engines, built at first load; keep it on a volume


GPU = Rendering("", "onnxruntime", mc.ModelInstanceGroup.KIND_GPU)
CPU = Rendering(CPU_RENDERING, CPU_BACKEND, mc.ModelInstanceGroup.KIND_CPU)


def triton_type(dtype: np.dtype) -> int:
    return _TRITON_TYPES[np.dtype(dtype)]


def _tensor(message, spec: TensorSpec, batched: bool, name: str | None = None):
    message.name = name or spec.name
    message.data_type = triton_type(spec.dtype)
    shape = spec.shape[1:] if batched else spec.shape
    message.dims.extend(-1 if d is None else d for d in shape)
    return message


def model_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    batching: Batching,
    rendering: Rendering,
    warmup: bool = False,
) -> mc.ModelConfig:
    """The configuration of one ONNX model whose tensors all lead with the batch axis."""
    config = mc.ModelConfig(name=name, backend=rendering.backend, max_batch_size=batching.max_batch_size)
    for spec in inputs:
        _tensor(config.input.add(), spec, batched=True)
    for spec in outputs:
        _tensor(config.output.add(), spec, batched=True)
    config.dynamic_batching.preferred_batch_size.extend(batching.preferred)
    config.dynamic_batching.max_queue_delay_microseconds = batching.queue_delay_us
    config.instance_group.add(kind=rendering.kind, count=rendering.instances)
    if rendering.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = f"{rendering.trt_cache}/{name}"
    if warmup:
        sample = config.model_warmup.add(name="batch_1", batch_size=1)
        for spec in inputs:
            sample_input = sample.inputs[spec.name]
            sample_input.data_type = triton_type(spec.dtype)
            sample_input.dims.extend(spec.shape[1:])
            sample_input.zero_data = True
    return config


@dataclass(frozen=True)
class Step:
    """One model in an ensemble: its tensor name -> the ensemble's tensor name."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]


def ensemble_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    steps: list[Step],
    max_batch_size: int,
) -> mc.ModelConfig:
    """An ensemble: Triton passes each step's outputs to the next step without a client round trip."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=max_batch_size)
    for spec in inputs:
        _tensor(config.input.add(), spec, batched=True)
    for spec in outputs:
        _tensor(config.output.add(), spec, batched=True)
    for step in steps:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        message.input_map.update(step.inputs)
        message.output_map.update(step.outputs)
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def from_text(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
