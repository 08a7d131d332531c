"""scripts/triton_local.sh as a user runs it: start, the repository index, status, stop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request

import pytest

from modelplane.local_server import LocalTriton, free_port, from_environment
from tests.helpers.paths import ROOT


@pytest.mark.slow
def test_triton_local_script_starts_lists_every_model_ready_and_stops(repository, scrfd, tmp_path):
    ports = {
        name: str(free_port()) for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")
    }
    env = {**os.environ, **ports, "TRITON_STATE_DIR": str(tmp_path / "state")}

    def script(*args: str) -> subprocess.CompletedProcess:
        command = ["scripts/triton_local.sh", *args, "--repository", str(repository)]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    started = script("start", "--twins", "--detector", str(scrfd))
    try:
        assert started.returncode == 0, started.stderr
        assert "CONTRACT TWINS" in started.stderr  # the repository holds twins: said loudly
        request = urllib.request.Request(
            f"http://127.0.0.1:{ports['TRITON_HTTP_PORT']}/v2/repository/index", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            index = json.loads(reply.read())
        names = {model["name"] for model in index}
        assert {"face_detect", "face_embed", "swap_latent", "face_swap", "face_enhance"} <= names
        prepared = {path.name for path in repository.iterdir() if (path / "config.pbtxt").is_file()}
        assert names == prepared and all(model["state"] == "READY" for model in index)
        status = script("status")
        assert status.stdout.startswith("running (pid ") and "face_swap READY" in status.stdout
    finally:
        stopped = script("stop")
    assert stopped.stdout.strip() == "stopped"
    assert script("status").stdout.strip() == "stopped"


def _on_free_ports(repository, monkeypatch) -> LocalTriton:
    for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"):
        monkeypatch.setenv(name, str(free_port()))
    monkeypatch.delenv("TRITON_STATE_DIR", raising=False)
    return from_environment(repository)


def test_two_local_tritons_on_two_ports_start_and_stop_independently(repository, monkeypatch):
    first, second = _on_free_ports(repository, monkeypatch), _on_free_ports(repository, monkeypatch)
    assert first.state_dir == ROOT / ".run" / f"triton-{first.grpc_port}"  # the default: one per port
    assert second.state_dir == ROOT / ".run" / f"triton-{second.grpc_port}"
    try:
        first.start()
        second.start()
        assert first.pid() != second.pid() and first.log_file != second.log_file
        # a pid file naming the other server is not this one's: stopping it signals nothing
        impostor = LocalTriton(repository, state_dir=first.state_dir, grpc_port=free_port())
        assert impostor.pid() is None and impostor.stop() is False
        assert first.is_ready() and first.pid_file.is_file()
        assert first.stop() is True
        assert not first.is_ready() and first.pid() is None
        assert second.is_ready() and second.status().startswith("running (pid ")
    finally:
        for server in (first, second):
            server.stop()
            shutil.rmtree(server.state_dir, ignore_errors=True)
    assert not second.is_ready() and second.status() == "stopped"
