"""The orchestrator's gRPC channel over several Triton servers: requests, not connections, are
balanced, and requests move to the live server when one stops, with no call failing beyond the
retries. Two real local servers on the same test repository: the session's `triton` and a second
one that each test starts (and stops)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from modelplane.local_server import running_server
from orchestrator.triton import REQUIRED_MODELS, TritonClient, TritonError, grpc_target
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.paths import TWO_FACES

MODEL = "face_embed"
WORKERS = 4


def inferences(server, models=(MODEL,)) -> int:
    """How many inferences the server ran on these models, from Triton's statistics extension."""
    with urllib.request.urlopen(f"{server.url}/v2/models/stats", timeout=5) as reply:
        stats = json.loads(reply.read())["model_stats"]
    return sum(model["inference_count"] for model in stats if model["name"] in models)


def settled(servers, before: list[int], total: int, models=(MODEL,)) -> list[int]:
    """Each server's inferences since `before`, once they add up to `total` (statistics are
    recorded just after a reply is sent)."""
    deadline = time.monotonic() + 10
    while True:
        counts = [inferences(server, models) - start for server, start in zip(servers, before, strict=True)]
        if sum(counts) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


@pytest.fixture
def second(repository, tmp_path):
    """Another Triton on the same repository (the session's `triton` is the one that stays up)."""
    with running_server(repository, tmp_path / "second") as server:
        yield server


@pytest.fixture
def crop(triton) -> np.ndarray:
    client = TritonClient(triton.grpc_url)
    size = client.crop_size(MODEL)
    client.close()
    return np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def test_requests_are_spread_over_every_listed_server(triton, second, crop):
    servers = [triton, second]
    client = TritonClient(",".join(f"localhost:{server.grpc_port}" for server in servers))  # names resolved
    before = [inferences(server) for server in servers]
    calls = 40
    for _ in range(calls):  # one after another, on one client and so one channel
        client.embed(crop)
    client.close()
    counts = settled(servers, before, calls)
    assert sum(counts) == calls
    assert min(counts) >= calls // 4, f"requests per server: {counts}"


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_requests_move_to_the_live_server_when_one_stops(triton, second, crop, stop):
    """SIGTERM: Triton unloads its models, answering NOT_FOUND, and then exits; SIGKILL: the
    connection is reset. Either way every call succeeds, within the client's retries."""
    client = TritonClient(f"{triton.grpc_url},{second.grpc_url}")
    started_ok: list[float] = []
    errors: list[str] = []
    done = threading.Event()

    def work() -> None:
        while not done.is_set():
            started = time.monotonic()
            try:
                client.embed(crop)
            except TritonError as error:
                errors.append(str(error))
            else:
                started_ok.append(started)

    first_before = inferences(second)
    workers = [threading.Thread(target=work) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 30
        while inferences(second) - first_before < 20:  # both servers take requests
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.1)
        live_before = inferences(triton)
        if stop == "SIGTERM":
            second.stop()
        else:
            pid = second.pid()
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        stopped_at = time.monotonic()
        time.sleep(3)
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=60)
        client.close()
    assert not errors, f"{len(errors)} calls failed, e.g. {errors[0]}"
    after_stop = sum(1 for started in started_ok if started > stopped_at)
    assert after_stop >= 20, f"only {after_stop} calls after the stop"
    assert settled([triton], [live_before], after_stop)[0] >= after_stop


def test_a_dns_target_balances_over_the_addresses_of_a_name(triton, crop):
    client = TritonClient(f"dns:///localhost:{triton.grpc_port}")
    before = inferences(triton)
    for _ in range(3):
        client.embed(crop)
    assert client.is_server_ready()
    client.close()
    assert settled([triton], [before], 3) == [3]


def test_the_cli_takes_a_list_of_servers(triton, second, tmp_path):
    servers = [triton, second]
    before = [inferences(server, REQUIRED_MODELS) for server in servers]
    output = tmp_path / "swapped.jpg"
    result = run_swap(",".join(server.grpc_url for server in servers), TWO_FACES, output)
    assert result.returncode == 0, result.stderr
    assert output.is_file()
    counts = settled(servers, before, 4, REQUIRED_MODELS)  # detect, embed, latent and swap at least
    assert all(count > 0 for count in counts), f"inferences per server: {counts}"


def test_grpc_targets():
    assert grpc_target("triton:8001") == "triton:8001"
    headless = "dns:///triton-headless.faceswap.svc.cluster.local:8001"
    assert grpc_target(headless) == headless
    assert grpc_target("ipv4:10.0.0.1:8001,10.0.0.2:8001") == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    assert grpc_target("127.0.0.1:8001, 127.0.0.2:8002") == "ipv4:127.0.0.1:8001,127.0.0.2:8002"
    assert grpc_target("[::1]:8001,[::1]:8002") == "ipv6:[::1]:8001,[::1]:8002"
    local = {info[4][0] for info in socket.getaddrinfo("localhost", 1, socket.AF_INET, socket.SOCK_STREAM)}
    expected = ",".join(f"{address}:8001" for address in sorted(local))
    assert grpc_target("localhost:8001,localhost:8001") == f"ipv4:{expected}"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("triton-a:8001,triton-b", "'triton-b' is not HOST:PORT"),
        ("triton-a:8001,triton-b:http", "'triton-b:http' is not HOST:PORT"),
        ("127.0.0.1:8001,[::1]:8001", "no address family (IPv4, IPv6) in common"),
        ("127.0.0.1:8001,no-such-host.invalid:8001", "cannot resolve no-such-host.invalid"),
    ],
)
def test_a_bad_list_is_one_readable_error(url, fragment, tmp_path):
    with pytest.raises(TritonError, match=re.escape(fragment)):
        grpc_target(url)
    result = run_swap(url, TWO_FACES, tmp_path / "out.jpg")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "out.jpg").exists()
