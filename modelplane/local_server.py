"""A local Triton Inference Server on loopback, serving the repository's CPU rendering.

The server comes from the `nvidia-pytriton` wheel in its own environment (numpy<2, ONNX Runtime),
as a Triton container would be separate from the application. `scripts/triton_local.sh` and the
test suite both start and stop it through `LocalTriton`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelplane import contract
from modelplane.configs import CPU_BACKEND, CPU_RENDERING
from modelplane.errors import LocalTritonError

ROOT = Path(__file__).resolve().parent.parent
BACKEND_MODEL = Path(__file__).with_name("backend") / "model.py"


@dataclass
class LocalTriton:
    repository: Path
    state_dir: Path = ROOT / ".run" / "triton-8001"
    env_dir: Path = ROOT / ".triton-env"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "tritonserver.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "tritonserver.pid"

    def _site_packages(self) -> Path:
        found = sorted(self.env_dir.glob("lib/python3*/site-packages/pytriton/tritonserver"))
        if not found:
            raise LocalTritonError(
                f"no Triton server in {self.env_dir}: run scripts/setup_env.sh to install it"
            )
        return found[-1].parent.parent

    def _backends(self, site: Path) -> Path:
        """Assemble the backend folder: Triton's python backend and the onnxruntime_python backend."""
        triton = site / "pytriton" / "tritonserver"
        version = site.parent.name.removeprefix("python")  # lib/python3.11/site-packages
        backends = self.state_dir / "backends"
        python = backends / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (
            triton / "backends" / "python" / "libtriton_python.so",
            triton / "backends" / "python" / "triton_python_backend_utils.py",
            triton / "python_backend_stubs" / version / "triton_python_backend_stub",
        ):
            shutil.copy2(source, python / source.name)
        (backends / CPU_BACKEND).mkdir(exist_ok=True)
        shutil.copy2(BACKEND_MODEL, backends / CPU_BACKEND / "model.py")
        return backends

    def pid(self) -> int | None:
        """The running server's process id, if the pid file names a live tritonserver on this one's
        gRPC port (never another server's, whatever the file says)."""
        try:
            pid = int(self.pid_file.read_text())
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        ours = f"--grpc-port={self.grpc_port}".encode() in arguments
        return pid if ours and arguments[0].endswith(b"tritonserver") else None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def models(self) -> list[dict]:
        request = urllib.request.Request(f"{self.url}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read())

    def start(self, timeout: float = 300.0) -> None:
        """Start the server unless it already runs; return once every model is READY."""
        if self.pid() is not None and self.is_ready():
            return
        if not (self.repository / contract.DETECT).is_dir():
            raise LocalTritonError(f"{self.repository} holds no prepared model repository")
        site = self._site_packages()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        libraries = [str(site / "nvidia_pytriton.libs"), str(site / "nvidia" / "cuda_runtime" / "lib")]
        env = dict(os.environ)
        env.update(
            LD_LIBRARY_PATH=os.pathsep.join([*libraries, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep),
            PATH=os.pathsep.join([str(self.env_dir / "bin"), env.get("PATH", "")]),
            VIRTUAL_ENV=str(self.env_dir),
            PYTHONPATH=str(site),
        )
        command = [
            str(site / "pytriton" / "tritonserver" / "bin" / "tritonserver"),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self._backends(site).resolve()}",
            f"--model-config-name={CPU_RENDERING}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        with open(self.log_file, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalTritonError(
                    f"tritonserver exited with code {process.returncode}: {self._last_error()}"
                )
            if self.is_ready():
                return
            time.sleep(0.5)
        self.stop()
        raise LocalTritonError(f"tritonserver was not ready after {timeout:.0f} s: {self._last_error()}")

    def _last_error(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if line.startswith("E") or "error" in line.lower()]
        relevant = [line for line in errors if "NVML" not in line and "DCGM" not in line]
        return (relevant or lines or ["no output"])[-1].strip() + f" (log: {self.log_file})"

    def stop(self, timeout: float = 60.0) -> bool:
        """Stop the server gracefully (SIGTERM, then SIGKILL); False if none was running."""
        pid = self.pid()
        if pid is None:  # a stale file, or one naming another server: left alone
            return False
        self.pid_file.unlink(missing_ok=True)
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not Path(f"/proc/{pid}").exists() or b"Z" in _state(pid):
                return True
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
        return True

    def status(self) -> str:
        pid = self.pid()
        if pid is None:
            return "stopped"
        if not self.is_ready():
            return f"running (pid {pid}), not ready; log: {self.log_file}"
        states = ", ".join(f"{m['name']} {m.get('state', '?')}" for m in self.models())
        return f"running (pid {pid}) on http {self.url}, grpc {self.grpc_url}: {states}"


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
    except (OSError, IndexError):
        return b"X"


def from_environment(repository: Path) -> LocalTriton:
    """A LocalTriton with ports from TRITON_HTTP_PORT, TRITON_GRPC_PORT and TRITON_METRICS_PORT, its
    pid file and log in TRITON_STATE_DIR (default .run/triton-GRPC_PORT: one folder per server)."""
    grpc_port = int(os.environ.get("TRITON_GRPC_PORT", 8001))
    return LocalTriton(
        repository=repository,
        state_dir=Path(os.environ.get("TRITON_STATE_DIR", ROOT / ".run" / f"triton-{grpc_port}")),
        http_port=int(os.environ.get("TRITON_HTTP_PORT", 8000)),
        grpc_port=grpc_port,
        metrics_port=int(os.environ.get("TRITON_METRICS_PORT", 8002)),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(repository: Path, state_dir: Path) -> Iterator[LocalTriton]:
    """A server on free loopback ports for the duration of a with block (tests, benchmarks)."""
    server = LocalTriton(
        repository,
        state_dir=state_dir,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
