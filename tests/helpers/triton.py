"""Direct Triton calls with Triton's own gRPC client, as a direct client makes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from modelplane.configs import from_text

ENSEMBLES = ["face_detect", "face_detect_raw", "face_embed", "face_swap", "face_enhance"]
ENSEMBLES += ["face_occlusion", "face_parse", "face_landmark"]  # the optional mask roles
CANVAS = (384, 640)  # a 16:9 frame's canvas for the detector, which takes any size


def infer(client, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    names = [o.name for o in client.get_model_metadata(model).outputs]
    result = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    return {name: result.as_numpy(name) for name in names}


def served_shape(name: str, dims: list[int]) -> list[int]:
    """An input's shape after the batch axis, its dynamic axes at CANVAS: the detector's images, HWC or
    CHW, and the raw anchor outputs of each stride (2 anchors per cell, as SCRFD-2.5G has)."""
    if dims == [-1, -1, 3]:
        return [*CANVAS, 3]
    if dims == [3, -1, -1]:
        return [3, *CANVAS]
    kind, _, stride = name.rpartition("_")
    if kind in ("scores", "boxes", "landmarks") and dims[0] == -1:
        return [(CANVAS[0] // int(stride)) * (CANVAS[1] // int(stride)) * 2, *dims[1:]]
    return dims


def random_inputs(client, model: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in each tensor's working range: pixels, thresholds, unit vectors or normalised values;
    a detector's inputs of any size at CANVAS, whose size goes to the decoding as `canvas_size`."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in client.get_model_metadata(model).inputs:
        shape = [batch, *served_shape(tensor.name, [int(d) for d in tensor.shape[1:]])]
        dtype = triton_to_np_dtype(tensor.datatype)
        if tensor.name == "canvas_size":
            inputs[tensor.name] = np.array([CANVAS] * batch, dtype)
        elif dtype == np.uint8:
            inputs[tensor.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif tensor.name.endswith("_threshold"):
            inputs[tensor.name] = rng.uniform(0, 1, shape).astype(dtype)
        elif len(shape) == 2:
            vectors = rng.standard_normal(shape)
            inputs[tensor.name] = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(dtype)
        else:
            inputs[tensor.name] = rng.uniform(-1, 1, shape).astype(dtype)
    return inputs


def assert_same(got: np.ndarray, expected: np.ndarray, name: str) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype, name
    if got.dtype == np.uint8:  # a rounding boundary may flip one level
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, name
    else:
        scale = max(float(np.abs(expected).max()), 1e-6)
        assert float(np.abs(got - expected).max()) / scale <= 1e-4, name


def ensemble_layout(repository: Path, root: Path) -> Path:
    """`repository` laid out in `root` with its ensembles as ensembles of python-backend steps: the GPU
    rendering's structure (each role model runs, and counts, on its own), servable on this machine."""
    for model in repository.iterdir():
        if not (model / "config.pbtxt").is_file():
            continue
        if from_text((model / "config.pbtxt").read_text()).platform == "ensemble":
            (root / model.name / "1").mkdir(parents=True)
            shutil.copy(model / "config.pbtxt", root / model.name)
        else:
            (root / model.name).symlink_to(model)
    return root
