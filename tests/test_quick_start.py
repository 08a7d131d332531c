"""The README's quick start, run as written: its bash block (Triton started by the script, the
service in the background, readiness awaited, a swap with curl), then its Python block, both must
write a swapped photo. Only what must differ on a shared test machine is replaced: free ports
(through the variables the scripts and the service read, and `localhost:8080` in the text), the
photos, the model repository (a folder of the test's own, not the checkout's) and where files go."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess

import cv2
import numpy as np
import pytest

from modelplane.local_server import free_port
from tests.helpers.paths import ROOT, TWO_FACES

pytestmark = pytest.mark.slow


def quick_start_blocks() -> dict[str, str]:
    section = (ROOT / "README.md").read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(bash|python)\n(.*?)```", section, re.DOTALL))


def test_the_quick_start_runs_as_written(scrfd, tmp_path):  # ../shared's detector, as written
    blocks = quick_start_blocks()
    assert set(blocks) == {"bash", "python"}
    ports = {
        name: str(free_port()) for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")
    }
    service_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FACESWAP_")},
        **ports,
        "TRITON_STATE_DIR": str(tmp_path / "triton"),
        "FACESWAP_PORT": str(service_port),
        "FACESWAP_TRITON_URL": f"127.0.0.1:{ports['TRITON_GRPC_PORT']}",
        "FACESWAP_DATA_DIR": str(tmp_path / "data"),
    }
    replaced = {
        "localhost:8080": f"localhost:{service_port}",
        "start --twins": f"start --repository {tmp_path / 'repository'} --twins",
        "serve.log": str(tmp_path / "serve.log"),
        "me.jpg": str(TWO_FACES),
        "photo.jpg": str(TWO_FACES),
        "swapped.jpg": str(tmp_path / "swapped.jpg"),
    }

    def adapted(text: str) -> str:
        for written, used in replaced.items():
            text = text.replace(written, used)
        return text

    stop = ["scripts/triton_local.sh", "stop"]
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", adapted(blocks["bash"])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the background service is in its process group
    )
    try:
        output, _ = shell.communicate(timeout=900)
        assert shell.returncode == 0, output + (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
        first = cv2.imread(str(tmp_path / "swapped.jpg"))
        assert first is not None and first.shape == cv2.imread(str(TWO_FACES)).shape
        assert not np.array_equal(first, cv2.imread(str(TWO_FACES)))
        (tmp_path / "swapped.jpg").unlink()
        python = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-c", adapted(blocks["python"])],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert python.returncode == 0, python.stderr
        assert python.stdout.strip() == "swapped 1 of 2 faces"
        assert cv2.imread(str(tmp_path / "swapped.jpg")).shape == first.shape
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)  # the service started with `&`
        subprocess.run(stop, cwd=ROOT, env=env, capture_output=True, timeout=120)
