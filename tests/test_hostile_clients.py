"""Hostile clients and a hostile environment, over real sockets: slow headers and bodies, too many
connections, invented methods, an empty API key, a full disk; and who may read what the service writes.

Each case checks the response (or the closed connection), that nothing is left on disk and that the
service still serves a normal job afterwards.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelplane.local_server import free_port
from orchestrator.errors import StorageFull
from orchestrator.images import write_atomically
from tests.helpers.cli import swap_command
from tests.helpers.clips import moving_photo
from tests.helpers.disk import fill, tmpfs
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.service import Service, create_job, problem, upload, wait_job

HEADER_TIMEOUT, BODY_TIMEOUT = 2, 3
LATE = 10  # how much later than its deadline a loaded machine may cut a connection


@pytest.fixture(scope="module")
def guarded(triton, tmp_path_factory):
    """A service with short header and body deadlines."""
    settings = {"header_timeout_seconds": HEADER_TIMEOUT, "body_timeout_seconds": BODY_TIMEOUT}
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("guarded") / "data", settings).start()
    yield service
    service.close()


def still_working(service: Service) -> None:
    """Nothing left behind, and a normal job runs to its result."""
    assert service.scratch_files() == []
    wait_job(service.http, create_job(service.http)["id"], timeout=120)


def connect(service: Service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=30)


def closed(sock: socket.socket, wait: float) -> bool:
    """Whether the server closed the connection within `wait` seconds (reading what it sent)."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if not sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
    return False


def trickle(sock: socket.socket, pieces, every: float, until: float) -> float:
    """Send a piece every `every` seconds until the server closes; seconds from the first piece."""
    began = time.monotonic()
    for piece in pieces:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(piece)
        if closed(sock, every):
            return time.monotonic() - began
        assert time.monotonic() - began < until, "the connection is still open"
    raise AssertionError("ran out of pieces")


def header_lines():
    yield b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
    for n in range(1000):
        yield f"X-Slow-{n}: 1\r\n".encode()


def test_headers_sent_a_line_at_a_time_are_cut_off(guarded):
    """The issue's client sent a header line every 5 s and kept its connection for ever."""
    with connect(guarded) as sock:
        seconds = trickle(sock, header_lines(), 0.5, HEADER_TIMEOUT + LATE)
    assert seconds >= HEADER_TIMEOUT - 0.1  # counted from the server's accept
    still_working(guarded)


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded) as sock:
        began = time.monotonic()
        assert closed(sock, HEADER_TIMEOUT + LATE)
    assert time.monotonic() - began >= HEADER_TIMEOUT - 0.1


def test_slow_headers_after_a_kept_alive_request_are_cut_off(guarded):
    """The deadline starts again with the next request's first byte, not only when connecting."""
    with connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(HEADER_TIMEOUT + 0.5)  # idle, but within the keep-alive time: still open
        seconds = trickle(sock, header_lines(), 0.5, HEADER_TIMEOUT + LATE)
    assert seconds >= HEADER_TIMEOUT
    still_working(guarded)


@pytest.mark.parametrize("endpoint", ["/v1/jobs", "/v1/swap"])
def test_a_trickling_body_gets_408(guarded, endpoint):
    folders = guarded.job_folders()
    head = (
        f"POST {endpoint} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n"
        "Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n"
        '--b0undary\r\nContent-Disposition: form-data; name="target"; filename="t.jpg"\r\n\r\n'
    )
    with connect(guarded) as sock:
        sock.sendall(head.encode())
        began = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"x" * 10)
            if select.select([sock], [], [], 0.5)[0]:
                answer += sock.recv(65536)
            assert time.monotonic() - began < BODY_TIMEOUT + LATE, answer
        assert time.monotonic() - began >= BODY_TIMEOUT - 0.5
        assert closed(sock, 2)  # and the connection is not kept
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
    assert body == f'{{"detail":"the request body did not arrive within {BODY_TIMEOUT} s"}}'.encode()
    assert guarded.job_folders() == folders
    still_working(guarded)


def test_connections_are_capped(triton, tmp_path):
    """Beyond the cap, requests get 503 at once, but for the health routes (a liveness probe must not
    fail for it); slow connections stop counting when they are cut."""
    service = Service(
        triton.grpc_url, tmp_path / "data", {"max_connections": 4, "header_timeout_seconds": 3}
    ).start()
    try:
        held = [connect(service) for _ in range(4)]
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.3)
        assert httpx.get(f"{service.url}/v1/jobs", timeout=10).status_code == 503
        assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200
        assert all(closed(sock, 3 + LATE) for sock in held)  # their headers timed out
        deadline = time.monotonic() + LATE  # and they stop counting
        while (answer := httpx.get(f"{service.url}/v1/jobs", timeout=10)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        for sock in held:
            sock.close()
        still_working(service)
    finally:
        service.close()


def request_series(service: Service) -> set[tuple]:
    text = service.http.get("/metrics").text
    return {
        tuple(sorted(sample.labels.items()))
        for family in text_string_to_metric_families(text)
        if family.name == "faceswap_http_requests"
        for sample in family.samples
    }


def test_invented_methods_and_paths_do_not_grow_the_metrics(guarded):
    """The issue: 300 requests with invented methods added 5,700 series, without a key."""
    request_series(guarded)  # so that the scrapes' own series are there before
    before = request_series(guarded)
    rng = np.random.default_rng(7)
    for n in range(300):
        method = "".join(chr(c) for c in rng.integers(65, 91, 8))
        path = ["/v1/jobs", "/healthz", f"/no/such/{n}", f"/v1/jobs/{n:032d}"][n % 4]
        response = guarded.http.request(method, path)
        assert response.status_code in (400, 404, 405), (method, path, response.status_code)
    added = request_series(guarded) - before
    methods = {dict(labels)["method"] for labels in added}
    routes = {dict(labels)["route"] for labels in added}
    assert methods <= {"other"} and routes <= {"/v1/jobs", "/healthz", "/v1/jobs/{job_id}", "unmatched"}
    assert len(added) <= 2 * 4 * 3  # two samples a series (total, created), four routes, three statuses
    still_working(guarded)


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_refuses_to_start(tmp_path, key):
    env = {**os.environ, "FACESWAP_API_KEY": key, "FACESWAP_DATA_DIR": str(tmp_path / "data")}
    command = [sys.executable, "-m", "orchestrator", "serve", "--port", str(free_port())]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: FACESWAP_API_KEY: is set but empty: set a key, or unset it to run without one"
    )
    assert not (tmp_path / "data").exists()


# --- a full disk ---------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs of the test's own."""
    with tmpfs(tmp_path / "disk", 16) as mount:
        yield mount


def test_a_full_disk_is_507_and_leaves_nothing(triton, small_disk):
    service = Service(triton.grpc_url, small_disk / "data", {}).start()
    try:
        filler = fill(small_disk, 256 * 1024)
        folders = service.job_folders()
        big = ("big.jpg", np.random.default_rng(1).bytes(1024 * 1024))  # judged once stored: never
        for endpoint in ("/v1/jobs", "/v1/swap"):
            response = service.http.post(endpoint, files=upload(target=big))
            problem(response, 507, "the server has no space left for this upload; try again later")
        assert service.job_folders() == folders and service.scratch_files() == []
        filler.unlink()
        still_working(service)
        assert service.http.post("/v1/swap", files=upload()).status_code == 200
    finally:
        service.close()


def test_a_full_temporary_folder_while_the_body_is_parsed_is_507(triton, small_disk, tmp_path):
    """Multipart parsing spools an upload over 1 MB into the temporary folder before any route runs."""
    service = Service(triton.grpc_url, tmp_path / "data", {"shutdown_grace_seconds": 1})
    service.env["TMPDIR"] = str(small_disk)  # where Python puts temporary files
    service.start()
    try:
        filler = fill(small_disk, 256 * 1024)
        big = ("big.jpg", np.random.default_rng(2).bytes(2 * 1024 * 1024))
        for endpoint in ("/v1/jobs", "/v1/swap"):
            problem(service.http.post(endpoint, files=upload(target=big)), 507, "the server's disk is full")
        filler.unlink()
        assert service.http.post("/v1/swap", files=upload()).status_code == 200
    finally:
        service.close()


def test_a_result_written_to_a_full_disk_is_507(small_disk):
    fill(small_disk, 0)
    with pytest.raises(StorageFull, match=r"^out.jpg: no space left on the device$") as error:
        write_atomically(small_disk / "out.jpg", bytes(1024 * 1024))
    assert error.value.status == 507 and os.listdir(small_disk) == ["filler"]


# --- who may read what is written ----------------------------------------------------------------------


def test_what_the_service_writes_is_its_users_alone(triton, tmp_path):
    """Uploads, results (the encoder's temporary file too), the database: owner-only, whatever the
    umask the service was started with."""
    clip = moving_photo(tmp_path / "clip.mp4", size="320x240", seconds=2.0, rate=10)
    previous = os.umask(0o022)
    try:
        service = Service(triton.grpc_url, tmp_path / "data", {}).start()
    finally:
        os.umask(previous)
    try:
        job = create_job(
            service.http, upload(target=("clip.mp4", clip.read_bytes())), {"preset": "ultrafast"}
        )
        wait_job(service.http, job["id"], ("running",), 60, check=lambda job: job["frames_done"] > 0)
        running = {path.name: mode_of(path) for path in service.job_folder(job["id"]).iterdir()}
        wait_job(service.http, job["id"], timeout=120)
        assert {"source-1.jpg", "target.mp4"} < set(running), running
        assert any(name.endswith(".part.mp4") for name in running), running  # ffmpeg writing the result
        written = [service.data_dir, *service.data_dir.rglob("*")]
        modes = {path.relative_to(tmp_path): mode_of(path) for path in written}
        assert Path("data/jobs.sqlite3") in modes and Path(f"data/jobs/{job['id']}/result.mp4") in modes
        assert {mode for path, mode in modes.items() if (tmp_path / path).is_dir()} == {0o700}, modes
        files = {mode for path, mode in modes.items() if (tmp_path / path).is_file()}
        assert files | set(running.values()) == {0o600}, (modes, running)
    finally:
        service.close()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_cli_writes_its_output_as_the_umask_says(triton, tmp_path):
    output = tmp_path / "swapped.png"
    command = swap_command(triton.grpc_url, TWO_FACES, output)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, umask=0o027)
    assert result.returncode == 0, result.stderr
    assert mode_of(output) == 0o640
