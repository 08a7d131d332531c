"""The recognizer role (ArcFace): its contract, its preparation and the `face_embed` ensemble.

face_embed   crop uint8 [B,112,112,3] BGR, aligned  -> embedding float32 [B,512], unit length,
                                                      and raw_embedding float32 [B,512], before it
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from modelplane import contract, graphs, twins
from modelplane.configs import Batching, Ensemble, Step
from modelplane.registry import Built, Entry, Role, checked_model
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

NAME = "recognizer"


@dataclass(frozen=True)
class RecognizerInterface:
    image: TensorSpec  # the aligned crop, NCHW
    embedding: TensorSpec  # [batch, D]
    input_norm: Normalization

    @property
    def size(self) -> int:
        return self.image.shape[2]


def _normalises_itself(model: onnx.ModelProto) -> bool:
    """InsightFace's test: MXNet-exported ArcFace graphs start with their own Sub and Mul."""
    names = [node.name for node in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return has_sub and has_mul


def read_recognizer(model: onnx.ModelProto) -> RecognizerInterface:
    """Check `model` against ArcFace's contract and describe it; raises InterfaceError."""
    image = single(NAME, graph_inputs(model), "input")
    check_image(NAME, image)
    image_size(NAME, image)
    embedding = single(NAME, graph_outputs(model), "output")
    check_float(NAME, embedding)
    if embedding.rank != 2 or embedding.shape[1] is None:
        raise fail(NAME, embedding.name, "an embedding [batch,D]", describe(embedding))
    norm = Normalization(0.0, 1.0) if _normalises_itself(model) else Normalization(127.5, 127.5)
    return RecognizerInterface(image, embedding, norm)


def prepare(files: dict[str, Path], options) -> Built:
    def samples(it: RecognizerInterface) -> dict[str, np.ndarray]:
        size = (it.size, it.size)
        return {
            it.image.name: image_inputs(
                it.image, size, it.input_norm, options.verify_batch, np.random.default_rng(0)
            )
        }

    model, it = checked_model(NAME, files[NAME], read_recognizer, samples)
    batching = options.batching.get(NAME, ROLE.batching)
    quick = Batching(batching.max_batch_size)
    opset = graphs.opset_for(model)
    size, dim = it.size, it.embedding.shape[1]
    pre = graphs.image_to_tensor((size, size), it.input_norm, it.image.dtype, "image", "tensor", opset)
    post = graphs.l2_normalize(dim, it.embedding.dtype, "tensor", "embedding", opset, "raw_embedding")
    vectors = [batched(contract.EMBEDDING, FLOAT32, (dim,)), batched(contract.RAW_EMBEDDING, FLOAT32, (dim,))]
    entries = [
        Entry(
            NAME,
            model,
            [it.image],
            [it.embedding],
            batching,
            warmup=options.warmup,
            warmup_dims={it.image.name: it.image.shape[1:]},
        ),
        Entry(
            f"{NAME}_preprocess",
            pre,
            [batched("image", UINT8, (size, size, 3))],
            [batched("tensor", it.image.dtype, (3, size, size))],
            quick,
        ),
        Entry(f"{NAME}_postprocess", post, [batched("tensor", it.embedding.dtype, (dim,))], vectors, quick),
    ]
    ensemble = Ensemble(
        contract.EMBED,
        [batched(contract.CROP, UINT8, (size, size, 3))],
        vectors,
        [
            Step(f"{NAME}_preprocess", {"image": contract.CROP}, {"tensor": "recognizer_input"}),
            Step(NAME, {it.image.name: "recognizer_input"}, {it.embedding.name: "raw"}),
            Step(f"{NAME}_postprocess", {"tensor": "raw"}, {v.name: v.name for v in vectors}),
        ],
        batching,
    )
    return Built(entries, [ensemble])


def write_twin(directory: Path, family: str | None = None) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "recognizer_twin.onnx"
    onnx.save(twins.recognizer(), str(path))
    return {NAME: path}


ROLE = Role(
    NAME,
    required=True,
    ensembles=(contract.EMBED,),
    prepare=prepare,
    twin=write_twin,
    batching=Batching(64, (8, 16, 32, 64), 1000),
    help="the face recognizer (ArcFace): identity embeddings",
)
