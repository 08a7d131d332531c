"""A small disk of a test's own: a tmpfs mounted in its temporary folder, and a file that fills it."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mount: Path, megabytes: int) -> Iterator[Path]:
    """A `megabytes` tmpfs at `mount` (mounting needs root, as CI and the project's machines have)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the project's machines run the tests as root)")
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """A file taking all the room on `disk` but about `leave` bytes; written until the disk refuses."""
    filler = disk / "filler"
    usage = os.statvfs(disk)
    filler.write_bytes(bytes(max(usage.f_bavail * usage.f_frsize - leave, 0)))
    if leave == 0:
        descriptor = os.open(filler, os.O_WRONLY | os.O_APPEND)
        try:
            for size in (4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(descriptor, b"\0" * size)
        finally:
            os.close(descriptor)
    return filler
