"""CPU time of a process tree, for benchmarks that count what Triton's processes spend."""

from __future__ import annotations

import os
from pathlib import Path


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process and its descendants (Triton runs its models in children)."""
    parents, used = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        used[pid] = sum(int(f) for f in fields[11:15])  # utime, stime, and those of reaped children
    tree, grew = {root}, True
    while grew:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        tree, grew = grown, len(grown) > len(tree)
    return sum(used.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")
