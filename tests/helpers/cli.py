"""Running `python -m orchestrator swap` as a real process, and checking how it fails."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.paths import ROOT, TWO_FACES


def swap_command(
    triton_url: str, target: Path, output: Path, *extra: str, source: Path = TWO_FACES
) -> list[str]:
    return [
        *(sys.executable, "-m", "orchestrator", "swap", "--source", str(source), "--target", str(target)),
        *("--output", str(output), "--triton-url", triton_url, *extra),
    ]


def run_swap(
    triton_url: str, target: Path, output: Path, *extra: str, env=None, **kwargs
) -> subprocess.CompletedProcess:
    command = swap_command(triton_url, target, output, *extra, **kwargs)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


def default_sigint() -> None:
    """In a child before it runs: SIGINT to its default, which Python turns into KeyboardInterrupt.

    A run started in the background inherits SIGINT ignored, and a Python started so ignores it too.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_swap(triton_url: str, target: Path, output: Path, *extra: str) -> subprocess.Popen:
    """A video swap in the background, returned once its encoder is writing the temporary output;
    it takes SIGINT as an interactive run does, however the tests were started."""
    command = swap_command(triton_url, target, output, *extra)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(f".{output.name}") for p in output.parent.iterdir()):
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    return process


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 1 and exactly one readable `error:` line, holding every fragment."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
