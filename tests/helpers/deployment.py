"""Reading the deployment files: Dockerfile instructions, the test extra's tools, an entrypoint stub."""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

from tests.helpers.paths import ROOT

# Stands in for tritonserver: records the arguments the entrypoint would start it with.
STUB = '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$STUB_ARGS"\n'


def tool(name: str) -> str:
    """A command-line tool installed by the test extra into this environment's scripts folder."""
    path = Path(sysconfig.get_path("scripts")) / name
    assert path.is_file(), f"{name} is missing from {path.parent}: install the test extra"
    return str(path)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def arguments(found: list[tuple[str, str]], name: str) -> list[str]:
    """The arguments of every `name` instruction among `found`."""
    return [args for instruction, args in found if instruction == name]
