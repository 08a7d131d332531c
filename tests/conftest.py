"""Session fixtures: the contract twins, a prepared repository, one real local Triton server and,
for the PostgreSQL job store, one real PostgreSQL server.

Tests that use a server are marked `triton` or `postgres` automatically; see `markers` in pyproject.toml.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from modelplane.local_server import running_server
from modelplane.mask_twins import write_mask_twins
from modelplane.prepare import prepare_repository
from modelplane.twins import write_twins
from orchestrator.triton import TritonClient
from tests.helpers.clips import frame_count, moving_photo
from tests.helpers.paths import SCRFD
from tests.helpers.postgres import running_postgres
from tests.helpers.service import LONG_FRAMES, SHORT_FRAMES, started_services
from tests.helpers.stores import StoreOpener
from tests.helpers.triton import ensemble_layout


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
def mask_twin_files(tmp_path_factory) -> dict[str, Path]:
    """The optional mask roles' twins: occluder, parser, landmarker."""
    return write_mask_twins(tmp_path_factory.mktemp("mask_twins"))


@pytest.fixture(scope="session")
def repository(tmp_path_factory, twin_files, mask_twin_files) -> Path:
    directory = tmp_path_factory.mktemp("model_repository")
    prepare_repository(twin_files | mask_twin_files, directory, twins=True)
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
    root = ensemble_layout(repository, tmp_path_factory.mktemp("ensembles"))
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


@pytest.fixture
def start_service(triton, tmp_path):
    """Start dedicated instances: `start(data_dir=None, triton_url=None, **settings)`; stopped after."""
    with started_services(triton.grpc_url, tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def service_clips(tmp_path_factory) -> dict[str, Path]:
    """The two-faces photo moving over a test pattern at 320x240: 1 s and 10 s, at low frame rates.

    The long clip is long enough to stop a job while it runs, and short enough to run again: on two
    CPU cores the detector takes 0.2 s or more a frame.
    """
    folder = tmp_path_factory.mktemp("service_clips")
    clips = {
        "short": moving_photo(folder / "short.mp4", size="320x240", seconds=1.0, rate=10),
        "long": moving_photo(folder / "long.mp4", size="320x240", seconds=10.0, rate=6),
    }
    assert (frame_count(clips["short"]), frame_count(clips["long"])) == (SHORT_FRAMES, LONG_FRAMES)
    return clips
