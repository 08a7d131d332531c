"""The command line's help in groups, every option described, and a mistake in one line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from orchestrator.cli import GROUPS, OPTION_GROUPS, build_parser
from orchestrator.options import SwapOptions, VideoOptions
from tests.helpers.paths import ROOT


def cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def swap_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["swap"]


def test_every_option_field_has_a_group():
    assert set(OPTION_GROUPS) == {*SwapOptions.model_fields, *VideoOptions.model_fields}
    assert set(OPTION_GROUPS.values()) <= set(GROUPS)


def test_swap_help_lists_every_option_described_in_its_group():
    result = cli("swap", "--help")
    assert result.returncode == 0, result.stderr
    titles = [f"\n{title}:\n" for title in GROUPS]
    positions = [result.stdout.find(title) for title in titles]
    assert -1 not in positions and positions == sorted(positions), positions  # each group, in order
    described = [a for a in swap_parser()._actions if a.option_strings]
    assert all(action.help and action.help.strip() for action in described), [
        action.option_strings for action in described if not action.help
    ]
    for action in described:
        assert action.option_strings[-1] in result.stdout
    usage = result.stdout.split("\n\n", 1)[0]
    assert len(usage.splitlines()) <= 2, usage  # not every flag again


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ("swap", "--target", "t.jpg", "--output", "o.jpg", "--selector", "bogus"),
            "invalid choice: 'bogus'",
        ),
        (("swap", "--source"), "expected at least one argument"),
        (("swapp",), "invalid choice: 'swapp'"),
    ],
)
def test_a_mistake_is_one_line_with_the_way_to_the_help(args, fragment):
    result = cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert lines[0].endswith("--help)")
