"""What a model role declares, once: its name, whether a repository needs it, the ensembles it
serves, how its file is read and prepared into model directories and ensembles, its twin, its
batching and its families. Preparation, fetching, the manifest, the command line and the twins
iterate the declarations in `modelplane.roles`; nothing else names a role.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from modelplane import graphs
from modelplane.configs import Batching, Ensemble
from modelplane.errors import ModelPlaneError, PreparationError
from modelplane.surgery import make_batch_dynamic, verify_batch_axis
from modelplane.tensors import UINT8, Normalization, TensorSpec, batched


@dataclass
class Entry:
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


@dataclass
class Built:
    """What one role adds to a repository: model directories and the ensembles that chain them."""

    entries: list[Entry] = field(default_factory=list)
    ensembles: list[Ensemble] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """How a repository is prepared; the same for every role."""

    detector_size: int = 640  # for detectors whose input size is dynamic
    verify_batch: int = 3  # batch size of the batch-axis verification
    tensorrt: bool = False  # TensorRT FP16 accelerator in the GPU rendering
    gpu_instances: int = 1
    cpu_instances: int = 1
    warmup: bool = True
    max_faces: int = 256  # faces face_detect returns per image (60 bytes each)
    swapper_family: str = "inswapper"  # modelplane.families
    enhancer_family: str = "gfpgan"
    batching: dict[str, Batching] = field(default_factory=dict)  # per role, instead of the role's own


# files (role -> path: the role's own, and its companions'), the options -> what the role adds
Prepare = Callable[[dict[str, Path], Options], Built]
# a folder, the family asked for (None: the role's first) -> role (and companions) -> twin file
WriteTwin = Callable[[Path, str | None], dict[str, Path]]


@dataclass(frozen=True)
class Role:
    name: str
    required: bool  # a repository serves it always; else only when its file is given
    ensembles: tuple[str, ...]  # the ensembles it serves (modelplane.contract)
    prepare: Prepare
    twin: WriteTwin
    batching: Batching  # the role model's own dynamic batching (preparation's default)
    families: tuple[str, ...] = ()  # the families it is prepared as (modelplane.families), first the default
    companions: tuple[str, ...] = ()  # files it may need beside its own (a swapper's converter)
    help: str = ""


def read_model(role: str, path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except (OSError, ValueError, DecodeError) as error:
        raise PreparationError(f"{role}: cannot read {path} as an ONNX model ({error})") from error


def checked_model(role: str, path: Path, read, samples, surgery=None) -> tuple[onnx.ModelProto, object]:
    """A role file read with `read(model)` (its contract), given a dynamic batch axis (with the
    arguments `surgery(interface)` gives), read again and verified on `samples(interface)` (batch-N
    equals N batch-1 runs); refusals name the file."""
    model = read_model(role, path)
    try:
        first = read(model)
        model = make_batch_dynamic(model, **(surgery(first) if surgery else {}))
        interface = read(model)
        verify_batch_axis(model, samples(interface), role)
    except (ModelPlaneError, ValueError) as error:  # ValueError: ONNX's word on a malformed graph
        raise PreparationError(f"{error} (file {path})") from error
    return model, interface


def crop_model_entries(
    name: str,
    model: onnx.ModelProto,
    inputs: list[TensorSpec],
    output: TensorSpec,
    norms: tuple[Normalization, Normalization],
    batching: Batching,
    warmup: bool,
) -> list[Entry]:
    """A model that takes a square image (its first input) and gives one: the model, its
    `<name>_preprocess` (uint8 BGR crop -> the input) and `<name>_postprocess` (the output -> uint8 BGR)."""
    image = inputs[0]
    size, opset = image.shape[2], graphs.opset_for(model)
    quick = Batching(batching.max_batch_size)  # pre/post graphs: batch whatever is queued, no waiting
    crop = [batched("image", UINT8, (size, size, 3))]
    pre = graphs.image_to_tensor((size, size), norms[0], image.dtype, "image", "tensor", opset)
    post = graphs.tensor_to_image((size, size), norms[1], output.dtype, "tensor", "image", opset)
    return [
        Entry(
            name, model, inputs, [output], batching, warmup=warmup, warmup_dims={image.name: image.shape[1:]}
        ),
        Entry(f"{name}_preprocess", pre, crop, [batched("tensor", image.dtype, (3, size, size))], quick),
        Entry(f"{name}_postprocess", post, [batched("tensor", output.dtype, (3, size, size))], crop, quick),
    ]
