"""Job stores opened directly on a test's database, and jobs queued into them as the API does."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from orchestrator.jobs.postgres import PostgresJobStore
from orchestrator.jobs.sqlite import SQLiteJobStore
from orchestrator.jobs.store import JobStore, process_name

HOST = process_name().split(":")[0]
ELSEWHERE = "another-host:1"  # a worker on another host: only its lease tells whether it lives


class StoreOpener:
    """`opener(lease=60, timeout=30)`: a new store on one database and media folder, as each replica
    opens its own (SQLite in `folder` when `url` is None); all closed at the end of the with block."""

    def __init__(self, folder: Path, url: str | None):
        self.folder, self.url = folder, url
        self.opened: list[JobStore] = []

    def __call__(self, lease: float = 60.0, timeout: float = 30.0) -> JobStore:
        if self.url is None:
            store = SQLiteJobStore(self.folder, lease=lease, timeout=timeout)
        else:
            store = PostgresJobStore(self.url, self.folder / "jobs", lease=lease, timeout=timeout)
        self.opened.append(store)
        return store

    def __enter__(self) -> StoreOpener:
        return self

    def __exit__(self, *_) -> None:
        for store in self.opened:
            store.close()


def queue(store: JobStore, count: int = 1, kind: str = "image") -> list[str]:
    """Queue jobs the way the API does: uploads into a new folder, then the record."""
    ids = []
    for n in range(count):
        job_id, folder = store.new_folder()
        (folder / "target.jpg").write_bytes(b"target %d" % n)
        store.create(job_id, kind, {"target": "target.jpg", "n": n, "options": {"selector": "many"}})
        ids.append(job_id)
        time.sleep(0.002)  # distinct creation times: "newest first" is then unambiguous
    return ids


def files(store: JobStore, job_id: str) -> set[str]:
    folder = store.folder(job_id)
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


def dead_pid() -> int:
    """The process id of a process that has ended."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
