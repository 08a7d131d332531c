"""One vocabulary: the CLI, the API and the pipeline offer and refuse the same names and values.

Also the ffmpeg command lines, built by pure functions, checked without running ffmpeg.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from orchestrator.api import create_app
from orchestrator.choices import ENCODER_PRESETS, FACE_ORDERS, PIXEL_BOOSTS, SELECTORS, VIDEO_CODECS
from orchestrator.cli import build_parser
from orchestrator.media import Encoding, VideoInfo, reader_command, writer_command
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.settings import Settings
from tests.helpers.paths import ROOT, TWO_FACES

VOCABULARY = {
    "selector": SELECTORS,
    "face_order": FACE_ORDERS,
    "video_codec": tuple(VIDEO_CODECS),
    "preset": ENCODER_PRESETS,
    "pixel_boost": PIXEL_BOOSTS,
}


def _swap_actions() -> dict[str, argparse.Action]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action for action in commands.choices["swap"]._actions}


@pytest.fixture(scope="module")
def job_form(tmp_path_factory) -> dict:
    """The properties of POST /v1/jobs's form fields in the OpenAPI document."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("data")))
    return app.openapi()["components"]["schemas"]["JobForm"]["properties"]


def _enum(schema: dict) -> tuple:
    for option in schema.get("anyOf", [schema]):
        if "enum" in option:
            return tuple(option["enum"])
        if "$ref" in option:
            return ()
    return ()


def test_every_option_has_one_name_in_the_cli_the_api_and_the_pipeline(job_form):
    actions = _swap_actions()
    for name in (*SwapOptions.model_fields, *VideoOptions.model_fields):
        assert name in actions, name
        assert actions[name].option_strings == [f"--{name.replace('_', '-')}"]
        assert name in job_form, name


def test_choices_and_defaults_come_from_one_table(job_form):
    actions = _swap_actions()
    defaults = SwapOptions().model_dump() | VideoOptions().model_dump()
    for name, values in VOCABULARY.items():
        assert tuple(actions[name].choices) == values, name
        offered = _enum(job_form[name]) or tuple(job_form[name].get("enum", ()))
        assert offered == values, (name, job_form[name])
    for name, default in defaults.items():
        assert job_form[name].get("default") == default, name


def test_the_cli_refuses_an_out_of_range_value_as_the_api_does(tmp_path):
    """The API floors the score threshold at 0.1 (tests/test_service.py); so does the CLI, before any work."""
    command = [sys.executable, "-m", "orchestrator", "swap", "--source", str(TWO_FACES)]
    command += ["--target", str(TWO_FACES), "--output", str(tmp_path / "o.jpg"), "--score-threshold", "0.05"]
    command += ["--triton-url", "127.0.0.1:9"]  # never reached
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: score_threshold: Input should be greater than or equal to 0.1")
    assert list(tmp_path.iterdir()) == []


def _info(path: str, audio_codec: str | None = "aac") -> VideoInfo:
    return VideoInfo(
        path=Path(path),
        container="mov,mp4,m4a,3gp,3g2,mj2",
        duration=10.0,
        width=640,
        height=480,
        rotation=0,
        fps=Fraction(25),
        frame_count=250,
        variable_frame_rate=False,
        video_codec="h264",
        has_audio=audio_codec is not None,
        audio_codec=audio_codec,
        audio_duration=10.0,
    )


def test_reader_command_trims_the_window_and_delivers_constant_rate_bgr():
    command = reader_command(_info("/in/clip.mp4"), 2.5, 3.0, trim=True)
    assert command[:1] == ["ffmpeg"] and "file:/in/clip.mp4" in command
    assert command[command.index("-ss") + 1] == "2.500000" and command[command.index("-t") + 1] == "3.000000"
    assert command.index("-ss") < command.index("-i")  # an input option: seek before decoding
    assert command[-3:] == ["-r", "25/1", "pipe:1"] and "bgr24" in command and "cfr" in command
    assert "-ss" not in reader_command(_info("/in/clip.mp4"), 0.0, 10.0, trim=False)


@pytest.mark.parametrize(
    ("muxer", "codec", "audio", "expected_audio"),
    [
        ("mp4", "libx264", "aac", ["-c:a", "copy"]),
        ("webm", "libvpx-vp9", "aac", ["-c:a", "libopus", "-b:a", "128k"]),
        ("mov", "libx265", "opus", ["-c:a", "aac", "-b:a", "192k"]),
        ("matroska", "libx264", "pcm_s16le", ["-c:a", "copy"]),
    ],
)
def test_writer_command_copies_audio_the_container_takes_and_re_encodes_the_rest(
    muxer, codec, audio, expected_audio
):
    encoding = Encoding(codec, muxer, 18, "veryfast")
    command = writer_command(
        Path("/out/.x.part"), 640, 480, Fraction(25), encoding, (_info("/in/a", audio), 1.0, 4.0)
    )
    at = command.index("-c:a")
    assert command[at : at + len(expected_audio)] == expected_audio
    assert command[-2:] == ["-f", muxer] or command[-3:-1] == ["-f", muxer]
    assert command[-1] == "file:/out/.x.part" and "-n" in command  # never overwrites
    assert command[command.index("-c:v") + 1] == codec
    assert ("-tag:v" in command) == (codec == "libx265" and muxer in ("mp4", "mov"))


def test_an_odd_frame_size_is_encoded_4_4_4_and_without_audio_nothing_is_mapped():
    command = writer_command(
        Path("/o.part"), 641, 480, Fraction(30000, 1001), Encoding("libx264", "mp4", 18, "fast")
    )
    assert command[command.index("-pix_fmt", command.index("-c:v")) + 1] == "yuv444p"
    assert command[command.index("-r") + 1] == "30000/1001" and "-c:a" not in command
    assert command.count("-map") == 1 and "+faststart" in command
