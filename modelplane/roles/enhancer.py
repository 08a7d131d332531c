"""The enhancer role (GFPGAN and FaceFusion's other face restorers): its contract and `face_enhance`.

face_enhance  crop uint8 [B,S,S,3] BGR, aligned (+ weight float32 [B,1] for CodeFormer)
              -> enhanced uint8 [B,S,S,3] BGR
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from modelplane import contract, family_twins, graphs
from modelplane.configs import Batching, Ensemble, Step
from modelplane.errors import InterfaceError
from modelplane.families import FLOATS, Family, FamilyChecker, family_names, get_family
from modelplane.registry import Built, Entry, Role, checked_model, crop_model_entries
from modelplane.tensors import (
    FLOAT32,
    UINT8,
    Normalization,
    TensorSpec,
    batched,
    check_image,
    describe,
    graph_inputs,
    graph_outputs,
    image_inputs,
    image_size,
    single,
)

NAME = "enhancer"


@dataclass(frozen=True)
class EnhancerInterface:
    image: TensorSpec  # the aligned crop, NCHW
    enhanced: TensorSpec
    input_norm: Normalization
    output_norm: Normalization
    weight: TensorSpec | None = None  # CodeFormer's fidelity weight [batch]

    @property
    def size(self) -> int:
        return self.image.shape[2]


def read_enhancer(family: Family, model: onnx.ModelProto) -> EnhancerInterface:
    """Check an enhancer file against `family`: one image in and out (any tensor names), or with a
    fidelity weight FaceFusion's names (`input`, `weight`)."""
    check = FamilyChecker(family)
    size = family.size
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    if not family.weight:
        try:
            image = single(NAME, inputs, "input")
            check_image(NAME, image)
            image_size(NAME, image)
            enhanced = single(NAME, outputs, "output")
            check_image(NAME, enhanced, square=image.shape[2])
        except InterfaceError as error:  # the role's words, with the family named
            detail = str(error).removeprefix(f"{NAME}: ")
            raise InterfaceError(f"{NAME}: family {family.name}: {detail}") from error
        if image.shape[2] != size:
            raise check.fail(image.name, f"the crop float[?,3,{size},{size}]", describe(image))
        return EnhancerInterface(image, enhanced, family.input_norm, family.output_norm)
    image_shape = (None, 3, size, size)
    image = check.tensor(inputs, "input", image_shape, "the crop")
    weight = check.tensor(inputs, "weight", (None,), "the fidelity weight", (*FLOATS, np.dtype(np.float64)))
    if len(inputs) != 2:
        names = ", ".join(s.name for s in inputs)
        raise check.fail(inputs[-1].name, "two inputs", f"{len(inputs)} ({names})")
    if len(outputs) != 1:
        raise check.fail(outputs[-1].name if outputs else "output", "one output", str(len(outputs)))
    enhanced = check.tensor(outputs, outputs[0].name, image_shape, "the result")
    return EnhancerInterface(image, enhanced, family.input_norm, family.output_norm, weight)


def _samples(it: EnhancerInterface, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {it.image.name: image_inputs(it.image, (it.size, it.size), it.input_norm, batch, rng)}
    if it.weight is not None:
        feeds[it.weight.name] = rng.uniform(0, 1, batch).astype(it.weight.dtype)
    return feeds


def prepare(files: dict[str, Path], options) -> Built:
    family = get_family(NAME, options.enhancer_family)
    path = files[NAME]
    model, it = checked_model(
        NAME, path, lambda m: read_enhancer(family, m), lambda i: _samples(i, options.verify_batch)
    )
    batching = options.batching.get(NAME, ROLE.batching)
    quick = Batching(batching.max_batch_size)
    opset = graphs.opset_for(model)
    size = it.size
    inputs = [it.image] + ([it.weight] if it.weight is not None else [])
    norms = (it.input_norm, it.output_norm)
    entries = crop_model_entries(NAME, model, inputs, it.enhanced, norms, batching, options.warmup)
    model_inputs = {it.image.name: "enhancer_input"}
    crop = [batched(contract.CROP, UINT8, (size, size, 3))]
    steps = [Step(f"{NAME}_preprocess", {"image": contract.CROP}, {"tensor": "enhancer_input"})]
    if it.weight is not None:
        graph = graphs.weight_to_tensor(it.weight.dtype, "weight", "tensor", opset)
        entries.append(
            Entry(
                f"{NAME}_weight",
                graph,
                [batched("weight", FLOAT32, (1,))],
                [batched("tensor", it.weight.dtype, ())],
                quick,
            )
        )
        model_inputs[it.weight.name] = "weight_input"
        crop.append(batched(contract.WEIGHT, FLOAT32, (1,)))
        steps.append(Step(f"{NAME}_weight", {"weight": contract.WEIGHT}, {"tensor": "weight_input"}))
    steps += [
        Step(NAME, model_inputs, {it.enhanced.name: "enhancer_output"}),
        Step(f"{NAME}_postprocess", {"tensor": "enhancer_output"}, {"image": contract.ENHANCED}),
    ]
    stated = family.parameters(Path(path).stem)
    ensemble = Ensemble(
        contract.ENHANCE,
        crop,
        [batched(contract.ENHANCED, UINT8, (size, size, 3))],
        steps,
        batching,
        parameters=tuple(sorted(stated.to_config().items())),
    )
    return Built(entries, [ensemble])


def write_twin(directory: Path, family: str | None = None) -> dict[str, Path]:
    return family_twins.write_family_twin(directory, NAME, family or family_names(NAME)[0])


ROLE = Role(
    NAME,
    required=True,
    ensembles=(contract.ENHANCE,),
    prepare=prepare,
    twin=write_twin,
    batching=Batching(16, (4, 8, 16), 2000),
    families=tuple(family_names(NAME)),
    help="the face enhancer (GFPGAN and FaceFusion's other restorers)",
)
