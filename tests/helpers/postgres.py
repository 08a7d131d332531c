"""A real, throwaway PostgreSQL server from Debian's `postgresql` package, on a loopback port.

The server refuses to run as root, so as root it runs as the package's `postgres` user, in a
temporary directory that user owns. Trust authentication on loopback only; no fsync (a test
cluster, deleted afterwards).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from modelplane.local_server import free_port

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))


class PostgresServer:
    def __init__(self, root: Path, port: int):
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"
        self.port = port
        if not BINARIES:
            raise FileNotFoundError("no PostgreSQL server: scripts/setup_env.sh installs Debian's postgresql")
        self.bin = BINARIES[-1].parent

    def _run(self, *command: str, timeout: float = 60) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*as_postgres, *command], capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)}: {result.stdout}{result.stderr}{log}")

    def init(self) -> PostgresServer:
        self.sockets.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        return self

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.sockets} "
            "-c fsync=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"faceswap_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started server for the duration of a with block; its files are deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="faceswap-postgres-"))  # under /tmp: the postgres user can reach it
    server = PostgresServer(root, free_port())
    try:
        server.init().start()
        yield server
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
