"""Triton model configurations, built through Triton's own `model_config` protobuf schema.

Every tensor name, shape and type comes from the ONNX file it describes. Each model gets two
renderings of the same interface and batching: `config.pbtxt` for the onnxruntime backend on GPU
instances (production), and `configs/cpu.pbtxt` for the python-based `onnxruntime_python` backend
on CPU instances (tests, laptops), picked with `tritonserver --model-config-name=cpu`. In the CPU
rendering an ensemble becomes one model that runs its steps fused into one ONNX Runtime graph
(parameter `ensemble_steps`), which spares the copies between the python backend's processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelplane.tensors import TensorSpec

CPU_RENDERING = "cpu"
CPU_BACKEND = "onnxruntime_python"
VERSION = "1"  # the one version of every model in the repository
ENSEMBLE_STEPS = "ensemble_steps"  # the fused CPU rendering's parameter: the steps, as JSON

_TRITON_TYPES = {
    np.dtype(np.uint8): mc.TYPE_UINT8,
    np.dtype(np.int32): mc.TYPE_INT32,
    np.dtype(np.int64): mc.TYPE_INT64,
    np.dtype(np.float16): mc.TYPE_FP16,
    np.dtype(np.float32): mc.TYPE_FP32,
    np.dtype(np.float64): mc.TYPE_FP64,  # CodeFormer's weight
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


def _tensor(message, spec: TensorSpec, batched: bool, optional: frozenset[str] = frozenset()):
    message.name = spec.name
    message.data_type = triton_type(spec.dtype)
    shape = spec.shape[1:] if batched else spec.shape
    message.dims.extend(-1 if d is None else d for d in shape)
    if batched and not shape:  # a [batch] tensor: Triton's dims [1], reshaped to none
        message.dims.append(1)
        message.reshape.SetInParent()
    if spec.name in optional:
        message.optional = True
    return message


def model_config(
    name: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    batching: Batching,
    rendering: Rendering,
    warmup: bool = False,
    optional: frozenset[str] = frozenset(),
    tensorrt: bool = True,
    warmup_dims: dict[str, tuple[int, ...]] | None = None,
) -> mc.ModelConfig:
    """The configuration of one ONNX model whose tensors all lead with the batch axis.

    With `max_batch_size` 0 Triton does not batch the model: its dims keep the batch axis (-1),
    which the onnxruntime backend requires of a model with `optional` inputs. `warmup_dims` gives
    the warm-up sample's dims of inputs with dynamic axes (a detector's reference size).
    """
    batched = batching.max_batch_size > 0
    config = mc.ModelConfig(name=name, backend=rendering.backend, max_batch_size=batching.max_batch_size)
    for spec in inputs:
        _tensor(config.input.add(), spec, batched, optional)
    for spec in outputs:
        _tensor(config.output.add(), spec, batched)
    if batched:
        config.dynamic_batching.preferred_batch_size.extend(batching.preferred)
        config.dynamic_batching.max_queue_delay_microseconds = batching.queue_delay_us
    config.instance_group.add(kind=rendering.kind, count=rendering.instances)
    if rendering.tensorrt and tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt"
        )
        accelerator.parameters["precision_mode"] = "FP16"
        accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
        accelerator.parameters["trt_engine_cache_enable"] = "1"
        accelerator.parameters["trt_engine_cache_path"] = f"{rendering.trt_cache}/{name}"
    if warmup and batched:
        sample = config.model_warmup.add(name="batch_1", batch_size=1)
        for spec in (s for s in inputs if s.name not in optional):
            sample_input = sample.inputs[spec.name]
            sample_input.data_type = triton_type(spec.dtype)
            dims = (warmup_dims or {}).get(spec.name, spec.shape[1:])
            sample_input.dims.extend(dims or (1,))  # as _tensor gives a [batch] tensor
            sample_input.zero_data = True
    return config


@dataclass(frozen=True)
class Step:
    """One model in an ensemble: its tensor name -> the ensemble's tensor name."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class Ensemble:
    """An ensemble's interface and steps; `batching` is its main model's."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    steps: list[Step]
    batching: Batching
    optional: frozenset[str] = frozenset()
    parameters: tuple[tuple[str, str], ...] = ()  # what clients read from the config (role, family...)
    warmup_dims: tuple[tuple[str, tuple[int, ...]], ...] = ()  # see model_config


def _set_parameters(config: mc.ModelConfig, ensemble: Ensemble) -> None:
    for key, value in ensemble.parameters:
        config.parameters[key].string_value = value


def ensemble_config(ensemble: Ensemble) -> mc.ModelConfig:
    """An ensemble: Triton passes each step's outputs to the next step without a client round trip."""
    batch = ensemble.batching.max_batch_size
    config = mc.ModelConfig(name=ensemble.name, platform="ensemble", max_batch_size=batch)
    for spec in ensemble.inputs:
        _tensor(config.input.add(), spec, True, ensemble.optional)
    for spec in ensemble.outputs:
        _tensor(config.output.add(), spec, True)
    for step in ensemble.steps:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        message.input_map.update(step.inputs)
        message.output_map.update(step.outputs)
    _set_parameters(config, ensemble)
    return config


def fused_config(ensemble: Ensemble, rendering: Rendering, warmup: bool = False) -> mc.ModelConfig:
    """An ensemble as one model of `rendering`'s backend: the same tensors and batching as the
    ensemble (the main model's dynamic batching), its steps given as ONNX files to fuse."""
    config = model_config(
        ensemble.name,
        ensemble.inputs,
        ensemble.outputs,
        ensemble.batching,
        rendering,
        warmup,
        ensemble.optional,
        warmup_dims=dict(ensemble.warmup_dims),
    )
    steps = [
        {"model": f"../{s.model}/{VERSION}/model.onnx", "inputs": s.inputs, "outputs": s.outputs}
        for s in ensemble.steps
    ]
    config.parameters[ENSEMBLE_STEPS].string_value = json.dumps(steps)
    _set_parameters(config, ensemble)
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def from_text(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
