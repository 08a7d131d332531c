"""Several orchestrator replicas sharing one PostgreSQL database and one data directory, behind a
real nginx (Debian's package) on loopback: what the tests and `scripts/bench_cluster.py` run.

nginx's front door is `docker/nginx.conf` (body size, timeouts, headers, WebSocket upgrades), with
an upstream of the replicas' loopback ports in place of the compose service's name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelplane.local_server import free_port
from orchestrator.jobs.postgres import PostgresJobStore
from tests.helpers.paths import ROOT
from tests.helpers.service import Service

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx in the foreground on a loopback port, proxying to `ports` as the compose front door does."""

    def __init__(self, root: Path, ports: list[int]):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ports = ports
        self.process: subprocess.Popen | None = None

    def config(self) -> str:
        backends = "".join(f"    server 127.0.0.1:{port};\n" for port in self.ports)
        upstream = f"upstream orchestrator {{\n    least_conn;\n{backends}    keepalive 16;\n}}\n"
        front = (ROOT / "docker" / "nginx.conf").read_text()
        front = re.sub(r"(?:^#.*\n)*^resolver .*\n", "", front, flags=re.M)  # Docker's DNS
        front, found = re.subn(
            r"^upstream orchestrator \{.*?^\}\n", lambda _: upstream, front, flags=re.M | re.S
        )
        assert found == 1, "docker/nginx.conf has no upstream orchestrator block"
        front = front.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        temp = "".join(
            f"    {kind}_temp_path {self.root / kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""  # its workers write the temporary files here
        return (
            f"{user}worker_processes 1;\npid {self.root / 'nginx.pid'};\n"
            f"error_log {self.root / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log {self.root / 'access.log'};\n{temp}{front}}}\n"
        )

    def start(self, timeout: float = 30.0) -> Nginx:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "nginx.conf").write_text(self.config())
        command = [NGINX, "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-g", "daemon off;"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, (self.root / "error.log").read_text(errors="replace")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            assert time.monotonic() < deadline, "nginx did not answer"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


class Cluster:
    """`replicas` services on one database and data directory under `root`, and nginx before them.

    `env` holds FACESWAP_* settings for every replica. Use it as a context manager.
    """

    def __init__(self, triton_url: str, database_url: str, root: Path, replicas: int = 3, **env):
        self.database_url = database_url
        root.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        settings = {"database_url": database_url, **env}
        self.replicas = [Service(triton_url, self.data, settings, free_port()) for _ in range(replicas)]
        self.nginx = Nginx(root / "nginx", [replica.port for replica in self.replicas])
        self.http = httpx.Client(base_url=self.nginx.url, timeout=120)

    def __enter__(self) -> Cluster:
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda replica: replica.start(), self.replicas))
        self.nginx.start()
        return self

    def __exit__(self, *_) -> None:
        self.nginx.stop()
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda replica: replica.close(), self.replicas))
        self.http.close()

    def store(self) -> PostgresJobStore:
        """The shared store, opened directly (close it after use)."""
        return PostgresJobStore(self.database_url, self.data / "jobs", timeout=5)

    def replica_of(self, worker: str) -> Service:
        """The replica whose worker `worker` (`host:pid:n`) is."""
        pid = int(worker.split(":")[1])
        (replica,) = [replica for replica in self.replicas if replica.pid == pid]
        return replica

    def counter(self, name: str, **labels: str) -> list[float]:
        """A counter's value on each replica (its own /metrics)."""
        values = []
        for replica in self.replicas:
            text = replica.http.get("/metrics").text
            values.append(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    for sample in family.samples
                    if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
                )
            )
        return values
