"""Write one benchmark's latest results into its own section of docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Each section is rewritten by the benchmark named in it; numbers are from the last run, on the
machine it names. On the shared CPU machines compare ratios within one run, not absolute times.
"""


def replace_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the `## title` section of the benchmarks page with `body`."""
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def machine() -> str:
    """What the numbers were measured on, for the report."""
    with open("/proc/cpuinfo") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return f"{os.cpu_count()} CPU cores ({names[0] if names else platform.processor()}), no GPU"


def measured_on() -> str:
    return f"Measured {datetime.date.today()} on {machine()}."
