"""Session fixtures: the contract twins, a prepared repository, one real local Triton server and,
for the PostgreSQL job store, one real PostgreSQL server.

Tests that use a server are marked `triton` or `postgres` automatically; see `markers` in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from modelplane.configs import from_text
from modelplane.local_server import running_server
from modelplane.prepare import prepare_repository
from modelplane.twins import write_twins
from orchestrator.triton import TritonClient
from tests.helpers.paths import SCRFD
from tests.helpers.postgres import running_postgres
from tests.helpers.stores import StoreOpener


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for server in ("triton", "postgres"):
            if server in getattr(item, "fixturenames", ()):
                item.add_marker(server)


@pytest.fixture(scope="session")
def scrfd() -> Path:
    if not SCRFD.is_file():
        raise FileNotFoundError(
            f"the real SCRFD detector is expected at {SCRFD} (../shared beside the checkout)"
        )
    return SCRFD


@pytest.fixture(scope="session")
def twin_files(tmp_path_factory, scrfd) -> dict[str, Path]:
    """The real SCRFD detector with recognizer, swapper and enhancer twins."""
    return write_twins(tmp_path_factory.mktemp("twins"), scrfd)


@pytest.fixture(scope="session")
def repository(tmp_path_factory, twin_files) -> Path:
    directory = tmp_path_factory.mktemp("model_repository")
    prepare_repository(twin_files, directory, twins=True)
    return directory


@pytest.fixture(scope="session")
def triton(repository, tmp_path_factory):
    """A real tritonserver on loopback serving the CPU rendering of the test repository."""
    with running_server(repository, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="session")
def ensemble_triton(repository, tmp_path_factory):
    """The repository served with its ensembles as ensembles of python-backend steps: the GPU
    rendering's structure (each role model runs, and counts, on its own), on this machine."""
    root = tmp_path_factory.mktemp("ensembles")
    for model in repository.iterdir():
        if not (model / "config.pbtxt").is_file():
            continue
        if from_text((model / "config.pbtxt").read_text()).platform == "ensemble":
            (root / model.name / "1").mkdir(parents=True)
            shutil.copy(model / "config.pbtxt", root / model.name)
        else:
            (root / model.name).symlink_to(model)
    with running_server(root, tmp_path_factory.mktemp("ensemble_triton")) as server:
        yield server


@pytest.fixture(scope="session")
def grpc_client(triton):
    """Triton's own gRPC client, as a direct Triton client uses it."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def triton_client(triton):
    """The orchestrator's client of the model plane."""
    client = TritonClient(triton.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback (Debian's package); `new_database()` gives a fresh database."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def open_store(request, tmp_path):
    """`open_store(lease=60, timeout=30)`: a job store on this test's database (SQLite, then a fresh
    PostgreSQL database) and media folder; call it again for another replica's store."""
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else None
    with StoreOpener(tmp_path, url) as opener:
        yield opener
