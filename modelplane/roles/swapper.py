"""The swapper role: its families' contracts, its source input and the `face_swap` ensemble.

    swap_latent  embedding float32 [B,512]                -> latent [B,512], the swapper's source input
    face_swap    crop uint8 [B,S,S,3] BGR + latent [B,D]    -> swapped uint8 [B,S,S,3] BGR
                 (or + source uint8 [B,T,T,3], the aligned source face, for families of image sources)

How the source vector is formed depends on the family (modelplane.families): inswapper's emap
matrix read from the file, the unit embedding itself, or the family's converter model (a companion
file, prepared as `swap_converter`) on the raw embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from modelplane import contract, family_twins, graphs
from modelplane.configs import Batching, Ensemble, Step
from modelplane.errors import InterfaceError, ModelPlaneError, PreparationError
from modelplane.families import (
    CONVERTER,
    CONVERTER_ROLE,
    CONVERTER_UNIT,
    EMAP,
    EMBEDDING_DIM,
    IMAGE,
    Family,
    FamilyChecker,
    family_names,
    get_family,
)
from modelplane.registry import Built, Entry, Role, checked_model, crop_model_entries
from modelplane.surgery import make_batch_dynamic, verify_batch_axis
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
    image_inputs,
    image_size,
    single,
)

NAME = "swapper"
UNIT_PIXELS = Normalization(0.0, 255.0)  # an image tensor of RGB values in 0..1


@dataclass(frozen=True)
class SwapperInterface:
    target: TensorSpec  # the target crop, NCHW
    source: TensorSpec  # the source vector [batch, D], or the aligned source crop [batch, 3, T, T]
    swapped: TensorSpec
    input_norm: Normalization
    output_norm: Normalization
    emap: np.ndarray | None = None  # the emap family's embedding -> latent matrix

    @property
    def size(self) -> int:
        return self.target.shape[2]

    @property
    def source_is_image(self) -> bool:
        return self.source.rank == 4


@dataclass(frozen=True)
class ConverterInterface:
    embedding: TensorSpec  # [batch, 512]
    vector: TensorSpec  # the family's source vector [batch, 512]


def _read_emap_swapper(model: onnx.ModelProto) -> SwapperInterface:
    """inswapper's contract: a target image and a latent in, one image out, the emap last."""
    inputs = graph_inputs(model)
    if len(inputs) != 2:
        names = ", ".join(s.name for s in inputs)
        raise InterfaceError(
            f"{NAME}: expected two inputs (target image, source latent), got {len(inputs)} ({names})"
        )
    image = next((s for s in inputs if s.rank == 4), None)
    latent = next((s for s in inputs if s.rank == 2), None)
    if image is None or latent is None:
        got = ", ".join(f"{s.name} {describe(s)}" for s in inputs)
        raise InterfaceError(
            f"{NAME}: expected a target image [batch,3,S,S] and a latent [batch,D], got {got}"
        )
    check_image(NAME, image)
    size = image_size(NAME, image)
    check_float(NAME, latent)
    swapped = single(NAME, graph_outputs(model), "output")
    check_image(NAME, swapped, square=size)
    if not model.graph.initializer:
        raise InterfaceError(f"{NAME}: no initializers; the emap must be the graph's last initializer")
    last = model.graph.initializer[-1]
    emap = numpy_helper.to_array(last)
    dim = latent.shape[1]
    if emap.ndim != 2 or emap.shape[0] != emap.shape[1] or dim not in (None, emap.shape[0]):
        raise fail(NAME, last.name, f"the emap [{dim},{dim}] as the last initializer", str(list(emap.shape)))
    return SwapperInterface(image, latent, swapped, UNIT_PIXELS, UNIT_PIXELS, emap.astype(np.float32))


def read_swapper(family: Family, model: onnx.ModelProto) -> SwapperInterface:
    """Check a swapper file against `family` and describe it: files of the emap family by role,
    whatever their tensor names; the others by FaceFusion's names (`target`, `source`)."""
    check = FamilyChecker(family)
    size = family.size
    image_shape = (None, 3, size, size)
    if family.source == EMAP:
        try:
            it = _read_emap_swapper(model)
        except InterfaceError as error:  # the role's words, with the family named
            detail = str(error).removeprefix(f"{NAME}: ")
            raise InterfaceError(f"{NAME}: family {family.name}: {detail}") from error
        if it.size != size:
            raise check.fail(it.target.name, f"the crop float[?,3,{size},{size}]", describe(it.target))
        return SwapperInterface(
            it.target, it.source, it.swapped, family.input_norm, family.output_norm, it.emap
        )
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    target = check.tensor(inputs, "target", image_shape, "the target crop")
    if family.source == IMAGE:
        source_shape = (None, 3, family.source_size, family.source_size)
        source = check.tensor(inputs, "source", source_shape, "the aligned source crop")
    else:
        source = check.tensor(inputs, "source", (None, EMBEDDING_DIM), "the source vector")
    if len(inputs) != 2:
        names = ", ".join(s.name for s in inputs)
        raise check.fail(inputs[-1].name, "two inputs", f"{len(inputs)} ({names})")
    if len(outputs) != 1:
        raise check.fail(outputs[-1].name if outputs else "output", "one output", str(len(outputs)))
    swapped = check.tensor(outputs, outputs[0].name, image_shape, "the result")
    return SwapperInterface(target, source, swapped, family.input_norm, family.output_norm)


def read_converter(family: Family, model: onnx.ModelProto) -> ConverterInterface:
    """A converter model: `input` an embedding [B,512] -> one output, the family's vector [B,512]."""
    check = FamilyChecker(family)
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    embedding = check.tensor(inputs, "input", (None, EMBEDDING_DIM), "the converter's embedding")
    if len(inputs) != 1 or len(outputs) != 1:
        raise check.fail(
            "input", "a converter with one input and one output", f"{len(inputs)} and {len(outputs)}"
        )
    vector = check.tensor(outputs, outputs[0].name, (None, EMBEDDING_DIM), "the converted vector")
    return ConverterInterface(embedding, vector)


def _samples(it: SwapperInterface, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {it.target.name: image_inputs(it.target, (it.size, it.size), it.input_norm, batch, rng)}
    if it.source_is_image:  # an aligned source image in 0..1
        feeds[it.source.name] = rng.uniform(0, 1, (batch, *it.source.shape[1:])).astype(it.source.dtype)
    else:
        latent = rng.standard_normal((batch, it.source.shape[1]))
        latent /= np.linalg.norm(latent, axis=1, keepdims=True)
        feeds[it.source.name] = latent.astype(it.source.dtype)
    return feeds


def load_converter(
    path: Path | None, family: Family, verify_batch: int
) -> tuple[onnx.ModelProto, ConverterInterface]:
    """The family's converter model (embedding -> source vector), re-batched and verified."""
    if path is None:
        raise PreparationError(f"{NAME}: family {family.name} needs its converter model (--converter PATH)")
    try:
        model = make_batch_dynamic(onnx.load(str(path)))
        it = read_converter(family, model)
        rng = np.random.default_rng(0)
        feeds = {
            it.embedding.name: rng.standard_normal((verify_batch, EMBEDDING_DIM)).astype(it.embedding.dtype)
        }
        verify_batch_axis(model, feeds, CONVERTER_ROLE)
    except (ModelPlaneError, ValueError, DecodeError, OSError) as error:
        raise PreparationError(f"{error} (file {path})") from error
    return model, it


def _source_entries(
    family: Family, it: SwapperInterface, opset: int, batching: Batching, converter: ConverterInterface | None
) -> list[Entry]:
    """The graphs that form the swapper's source input: `swap_latent` (or, with a converter, its
    last step `swap_source`) from an embedding, or `swapper_source_preprocess` for a source crop."""
    if it.source_is_image:
        size = it.source.shape[2]
        pre = graphs.image_to_tensor((size, size), UNIT_PIXELS, it.source.dtype, "image", "tensor", opset)
        # swap_latent stays, as the unit embedding, for clients and readiness checks that expect it
        unit = graphs.source_vector(EMBEDDING_DIM, FLOAT32, FLOAT32, True, "embedding", "latent", opset)
        vector = [batched("embedding", FLOAT32, (EMBEDDING_DIM,))]
        return [
            Entry(
                "swapper_source_preprocess",
                pre,
                [batched("image", UINT8, (size, size, 3))],
                [batched("tensor", it.source.dtype, (3, size, size))],
                batching,
            ),
            Entry(contract.LATENT, unit, vector, [batched("latent", FLOAT32, (EMBEDDING_DIM,))], batching),
        ]
    dim = it.source.shape[1]
    latent = [batched("latent", it.source.dtype, (dim,))]
    embedding = [batched("embedding", FLOAT32, (dim,))]
    if family.source == EMAP:
        graph = graphs.embedding_to_latent(it.emap, it.source.dtype, "embedding", "latent", opset)
        return [Entry(contract.LATENT, graph, embedding, latent, batching)]
    if converter is None:
        unit = graphs.source_vector(dim, FLOAT32, it.source.dtype, True, "embedding", "latent", opset)
        return [Entry(contract.LATENT, unit, embedding, latent, batching)]
    output = converter.vector
    unit = family.source == CONVERTER_UNIT
    graph = graphs.source_vector(dim, output.dtype, it.source.dtype, unit, "vector", "latent", opset)
    return [Entry("swap_source", graph, [batched("vector", output.dtype, (dim,))], latent, batching)]


def prepare(files: dict[str, Path], options) -> Built:
    family = get_family(NAME, options.swapper_family)
    path = files[NAME]
    model, it = checked_model(
        NAME, path, lambda m: read_swapper(family, m), lambda i: _samples(i, options.verify_batch)
    )
    batching = options.batching.get(NAME, ROLE.batching)
    quick = Batching(batching.max_batch_size)
    opset = graphs.opset_for(model)
    size = it.size
    entries, ensembles = [], []
    converter = None
    if family.source in (CONVERTER, CONVERTER_UNIT):
        converter_model, converter = load_converter(files.get(CONVERTER_ROLE), family, options.verify_batch)
        entries.append(
            Entry("swap_converter", converter_model, [converter.embedding], [converter.vector], quick)
        )
        latent = it.source
        ensembles.append(
            Ensemble(
                contract.LATENT,
                [batched(contract.EMBEDDING, FLOAT32, (EMBEDDING_DIM,))],
                [batched(contract.LATENT_VECTOR, latent.dtype, (EMBEDDING_DIM,))],
                [
                    Step(
                        "swap_converter",
                        {converter.embedding.name: contract.EMBEDDING},
                        {converter.vector.name: "vector"},
                    ),
                    Step("swap_source", {"vector": "vector"}, {"latent": contract.LATENT_VECTOR}),
                ],
                batching,
            )
        )
    norms = (it.input_norm, it.output_norm)
    entries += crop_model_entries(
        NAME, model, [it.target, it.source], it.swapped, norms, batching, options.warmup
    )
    entries += _source_entries(family, it, opset, quick, converter)
    model_inputs = {it.target.name: "swapper_input"}
    crop = [batched(contract.CROP, UINT8, (size, size, 3))]
    steps = [Step(f"{NAME}_preprocess", {"image": contract.CROP}, {"tensor": "swapper_input"})]
    if it.source_is_image:  # an aligned source crop, uint8 BGR
        source_size = it.source.shape[2]
        model_inputs[it.source.name] = "source_input"
        crop.append(batched(contract.SOURCE_CROP, UINT8, (source_size, source_size, 3)))
        steps.append(
            Step(f"{NAME}_source_preprocess", {"image": contract.SOURCE_CROP}, {"tensor": "source_input"})
        )
    else:
        model_inputs[it.source.name] = contract.LATENT_VECTOR
        crop.append(batched(contract.LATENT_VECTOR, it.source.dtype, (it.source.shape[1],)))
    steps += [
        Step(NAME, model_inputs, {it.swapped.name: "swapper_output"}),
        Step(f"{NAME}_postprocess", {"tensor": "swapper_output"}, {"image": contract.SWAPPED}),
    ]
    stated = family.parameters(Path(path).stem, latent_model=None if it.source_is_image else contract.LATENT)
    ensembles.append(
        Ensemble(
            contract.SWAP,
            crop,
            [batched(contract.SWAPPED, UINT8, (size, size, 3))],
            steps,
            batching,
            parameters=tuple(sorted(stated.to_config().items())),
        )
    )
    return Built(entries, ensembles)


def write_twin(directory: Path, family: str | None = None) -> dict[str, Path]:
    """The twin of the family (and its converter's twin when the family has one)."""
    return family_twins.write_family_twin(directory, NAME, family or family_names(NAME)[0])


ROLE = Role(
    NAME,
    required=True,
    ensembles=(contract.SWAP, contract.LATENT),
    prepare=prepare,
    twin=write_twin,
    batching=Batching(64, (8, 16, 32, 64), 1000),
    families=tuple(family_names(NAME)),
    companions=(CONVERTER_ROLE,),
    help="the face swapper (inswapper_128 and FaceFusion's other families)",
)
