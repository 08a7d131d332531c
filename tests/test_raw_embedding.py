"""face_embed's `raw_embedding` beside `embedding`: a client asking for the embedding alone gets it as
before, and a repository prepared before the raw output existed gives one clear error (prepare it
again), never a KeyError. Its values are checked per family in tests/test_family_serving.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from modelplane.configs import from_text, to_text
from modelplane.local_server import CPU_RENDERING, running_server
from orchestrator.errors import TritonError
from orchestrator.triton import TritonClient


def without_raw_embedding(repository: Path, root: Path) -> Path:
    """`repository` laid out in `root`, face_embed's CPU rendering without `raw_embedding`."""
    for model in repository.iterdir():
        if model.name != "face_embed":
            (root / model.name).symlink_to(model)
    shutil.copytree(repository / "face_embed", root / "face_embed")
    path = root / "face_embed" / "configs" / f"{CPU_RENDERING}.pbtxt"
    config = from_text(path.read_text())
    kept = [output for output in config.output if output.name != "raw_embedding"]
    assert len(kept) == len(config.output) - 1
    del config.output[:]
    config.output.extend(kept)
    path.write_text(to_text(config))
    return root


@pytest.mark.triton
def test_a_repository_without_raw_embedding_asks_to_be_prepared_again(repository, tmp_path):
    (tmp_path / "repository").mkdir()
    stale = without_raw_embedding(repository, tmp_path / "repository")
    with running_server(stale, tmp_path / "triton") as server:
        client = TritonClient(server.grpc_url)
        crops = np.zeros((1, 112, 112, 3), np.uint8)
        with pytest.raises(TritonError, match=r"no raw_embedding output: .* prepare it again"):
            client.embed(crops)
        client.close()


@pytest.mark.triton
def test_a_client_asking_for_the_embedding_alone_gets_it_as_before(grpc_client, triton_client):
    crops = np.random.default_rng(2).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    tensor = grpcclient.InferInput("crop", list(crops.shape), "UINT8")
    tensor.set_data_from_numpy(crops)
    result = grpc_client.infer("face_embed", [tensor], outputs=[grpcclient.InferRequestedOutput("embedding")])
    assert result.as_numpy("raw_embedding") is None
    unit, raw = triton_client.embed(crops)
    assert np.array_equal(result.as_numpy("embedding"), unit)
    assert np.abs(unit - raw / np.linalg.norm(raw, axis=1, keepdims=True)).max() <= 1e-6
