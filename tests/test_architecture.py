"""The layout the design asks for, checked on the source: no import cycle in either plane, the two
planes sharing only the contract module, and ensemble names written in that module alone."""

from __future__ import annotations

import ast
import subprocess
import sys

from modelplane import contract
from tests.helpers.paths import ROOT

PLANES = ("orchestrator", "modelplane")
ENSEMBLES = {contract.DETECT, contract.DETECT_RAW, contract.EMBED, contract.LATENT, contract.SWAP}
ENSEMBLES |= {contract.ENHANCE, contract.OCCLUSION, contract.PARSE, contract.LANDMARK}


def sources(plane: str):
    for path in sorted((ROOT / plane).rglob("*.py")):
        yield path, ast.parse(path.read_text())


def test_no_import_cycle_in_either_plane():
    tool = ROOT.parent / "shared" / "tools" / "import_cycles.py"
    found = subprocess.run(
        [sys.executable, str(tool), *(str(ROOT / plane) for plane in PLANES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0 and found.stdout == "", found.stdout + found.stderr


def test_the_orchestrator_takes_only_the_contract_from_the_model_plane():
    imported = set()
    for _, tree in sources("orchestrator"):
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modelplane"):
                imported |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("modelplane")}
    assert imported == {"modelplane.contract"}


def test_ensemble_names_are_written_in_the_contract_alone():
    assert len(ENSEMBLES) == 9
    for plane in PLANES:
        for path, tree in sources(plane):
            if path == ROOT / "modelplane" / "contract.py":
                continue
            written = {
                node.value
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in ENSEMBLES
            }
            assert not written, f"{path.relative_to(ROOT)} writes {sorted(written)}: use modelplane.contract"
