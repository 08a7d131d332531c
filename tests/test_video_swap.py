"""The video swap end to end: real ffmpeg, a real Triton, clips generated here from a real photo."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from modelplane.local_server import running_server
from orchestrator.errors import Cancelled
from orchestrator.faces.align import warp_face
from orchestrator.faces.blend import paste_area
from orchestrator.media import FrameReader, probe
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.pipeline import swap_video, video_frame
from orchestrator.swapper import FaceSwapper
from tests.helpers.cli import assert_one_line_error, run_swap, start_swap, swap_command
from tests.helpers.clips import ffmpeg, moving_photo
from tests.helpers.paths import ROOT, TWO_FACES

FAST = VideoOptions(preset="ultrafast")
FAST_CLI = ("--preset", "ultrafast")


@pytest.fixture(scope="module")
def video_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_clips")
    return {
        "mp4": moving_photo(folder / "sine.mp4"),
        "webm": moving_photo(folder / "speech.webm", audio="speech", rate=24),
    }


def frames_of(path: Path) -> list[np.ndarray]:
    with FrameReader(probe(path)) as reader:
        return list(reader)


def face_areas(swapper: FaceSwapper, frames) -> list[np.ndarray]:
    """Per frame, where a swapped face may be pasted (the faces' paste areas)."""
    masks = []
    for frame, faces in zip(frames, swapper.find_faces(frames), strict=True):
        mask = np.zeros(frame.shape[:2], bool)
        for face in faces:
            x1, y1, x2, y2 = paste_area(
                warp_face(frame, face.landmarks, "arcface_128", 128)[1], 128, frame.shape
            )
            mask[y1:y2, x1:x2] = True
        masks.append(mask)
    return masks


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_video_swap_keeps_frames_rate_size_duration_and_audio(triton_client, video_clips, tmp_path, kind):
    source = video_clips[kind]
    output = tmp_path / f"out.{kind}"
    swapper = FaceSwapper(triton_client)
    events = []
    report = swap_video(swapper, [TWO_FACES], source, output, video=FAST, progress=events.append)
    before, after = probe(source), probe(output)
    assert after.frame_count == before.frame_count == report.frames
    assert after.fps == before.fps and (after.width, after.height) == (before.width, before.height)
    one_frame = 1 / float(before.fps)
    assert abs(after.duration - before.duration) <= one_frame
    assert after.has_audio and abs(after.audio_duration - before.audio_duration) <= one_frame + 0.03
    assert report.swapped == report.faces >= 2 * report.frames  # both faces, every frame
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1].done == report.frames
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # no temporary files left

    inputs, outputs = frames_of(source), frames_of(output)
    areas = face_areas(swapper, inputs)
    for frame, result, area in zip(inputs, outputs, areas, strict=True):
        difference = np.abs(result.astype(int) - frame).mean(axis=2)
        grown = cv2.dilate(area.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert difference[~grown].mean() < 3  # outside the faces: only compression noise
        assert difference[area].mean() > 10  # inside: the swap


def test_odd_size_and_rotation_tag_keep_the_displayed_picture(triton_client, tmp_path):
    upright = moving_photo(tmp_path / "odd.mp4", size="482x362", seconds=1.0, odd=True)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", upright, "-c", "copy", "-metadata:s:v", "rotate=90", rotated)
    source = probe(rotated)
    assert source.rotation in (90, 270) and (source.width, source.height) == (361, 481)
    output = tmp_path / "out.mp4"
    report = swap_video(FaceSwapper(triton_client), [TWO_FACES], rotated, output, video=FAST)
    result = probe(output)
    assert (result.width, result.height) == (361, 481) and result.frame_count == source.frame_count
    assert report.swapped > 0


def test_reference_selection_stays_on_the_same_person(triton_client, video_clips, tmp_path):
    """The left person of frame 0 is the reference: only that face changes, in every frame."""
    output = tmp_path / "left_only.mp4"
    swapper = FaceSwapper(
        triton_client, SwapOptions(selector="reference", face_order="left-right", reference_distance=0.3)
    )
    video = VideoOptions(preset="ultrafast", reference_frame=0)
    report = swap_video(swapper, [TWO_FACES], video_clips["mp4"], output, video=video)
    assert report.swapped == report.frames  # one face of two, in every frame
    inputs, outputs = frames_of(video_clips["mp4"]), frames_of(output)
    faces = swapper.find_faces(inputs)
    for frame, result, found in zip(inputs, outputs, faces, strict=True):
        left, right = sorted(found, key=lambda f: f.box[0])[:2]
        changes = []
        for face in (left, right):
            x1, y1, x2, y2 = face.box.astype(int)
            changes.append(np.abs(result[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean())
        assert changes[0] > 10 and changes[1] < 4


def decoded_by_ffmpeg(path: Path) -> list[np.ndarray]:
    """Every frame as ffmpeg alone decodes it, BGR."""
    video = probe(path)
    command = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-",
    ]
    data = subprocess.run(command, capture_output=True, check=True, timeout=120).stdout
    return list(np.frombuffer(data, np.uint8).reshape(-1, video.height, video.width, 3))


def test_the_reference_frame_is_frame_n_and_a_frame_past_the_end_is_refused(triton, video_clips, tmp_path):
    clip = video_clips["mp4"]
    frames = decoded_by_ffmpeg(clip)
    video = probe(clip)
    assert len(frames) == video.frame_count > 10
    for index in (7, len(frames) - 1):
        assert np.array_equal(video_frame(video, index), frames[index])
        assert np.abs(frames[index].astype(int) - frames[0]).max() > 40  # the picture moved since frame 0
    missing = len(frames)
    options = ("--selector", "reference", "--reference-frame", str(missing), *FAST_CLI)
    result = run_swap(triton.grpc_url, clip, tmp_path / "out.mp4", *options)
    assert_one_line_error(result, f"sine.mp4: there is no frame {missing}")
    assert list(tmp_path.iterdir()) == []


def test_cancellation_leaves_nothing(triton_client, video_clips, tmp_path):
    cancel = threading.Event()

    def stop_after_first_frames(progress):
        cancel.set()

    output = tmp_path / "out.mp4"
    with pytest.raises(Cancelled):
        swap_video(
            FaceSwapper(triton_client),
            [TWO_FACES],
            video_clips["mp4"],
            output,
            video=FAST,
            progress=stop_after_first_frames,
            cancel=cancel,
        )
    assert list(tmp_path.iterdir()) == []


# --- the command line, bad input, interruption


def assert_clean_failure(result, folder: Path, kept: set[str], *fragments: str) -> None:
    assert_one_line_error(result, *fragments)
    assert {p.name for p in folder.iterdir()} == kept  # no output, no temporary file


def test_cli_swaps_a_video_and_reports_frames(triton, video_clips, tmp_path):
    result = run_swap(triton.grpc_url, video_clips["mp4"], tmp_path / "out.mkv", *FAST_CLI)
    assert result.returncode == 0, result.stderr
    assert "in 50 frames" in result.stdout
    assert probe(tmp_path / "out.mkv").frame_count == 50


@pytest.mark.parametrize(
    ("name", "make", "fragment"),
    [
        ("empty.mp4", lambda path, clip: path.write_bytes(b""), "the file is empty"),
        (
            "noise.mp4",
            lambda path, clip: path.write_bytes(np.random.default_rng(0).bytes(50_000)),
            "not an image or a video",
        ),
        (
            "cut.mp4",
            lambda path, clip: path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2]),
            "cut.mp4",
        ),
        ("voice.m4a", lambda path, clip: ffmpeg("-i", clip, "-vn", "-c:a", "copy", path), "no video stream"),
    ],
)
def test_bad_videos_are_clear_errors_with_no_output(triton, video_clips, tmp_path, name, make, fragment):
    target = tmp_path / name
    make(target, video_clips["mp4"])
    result = run_swap(triton.grpc_url, target, tmp_path / "out.mp4", *FAST_CLI)
    assert_clean_failure(result, tmp_path, {name}, fragment)


def test_unsupported_codec_is_a_clear_error(triton, video_clips, tmp_path):
    """An AVI whose video stream is tagged with a codec ffmpeg cannot decode."""
    avi = tmp_path / "clip.avi"
    ffmpeg("-i", video_clips["mp4"], "-an", "-c:v", "mpeg4", "-t", "0.5", avi)
    data = avi.read_bytes().replace(b"FMP4", b"ZZZZ").replace(b"mp4v", b"ZZZZ")
    avi.write_bytes(data)
    result = run_swap(triton.grpc_url, avi, tmp_path / "out.mp4", *FAST_CLI)
    assert_clean_failure(result, tmp_path, {"clip.avi"}, "clip.avi")


@pytest.mark.slow
def test_sigint_mid_video_leaves_no_output(triton, tmp_path):
    longer = moving_photo(tmp_path / "long.mp4", seconds=8.0)
    process = start_swap(triton.grpc_url, longer, tmp_path / "out.mp4", *FAST_CLI)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert {p.name for p in tmp_path.iterdir()} == {"long.mp4", "photo.png"}


@pytest.mark.slow
def test_triton_stopping_mid_video_is_a_clear_error_not_a_hang(repository, tmp_path):
    longer = moving_photo(tmp_path / "long.mp4", seconds=12.0)
    with running_server(repository, tmp_path / "triton") as server:
        process = start_swap(server.grpc_url, longer, tmp_path / "out.mp4", *FAST_CLI)
    stopped = time.monotonic()  # the server is gone; the job must fail within its bounded retries
    _, stderr = process.communicate(timeout=120)
    assert time.monotonic() - stopped < 60
    lines = stderr.strip().splitlines()
    assert process.returncode == 1 and lines[-1].startswith("error: Triton at "), stderr
    assert not (tmp_path / "out.mp4").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.mp4")]


def peak_memory_mb(triton_url: str, target: Path, output: Path) -> float:
    """Run the CLI in a child that reports its own peak resident memory when it ends."""
    code = (
        "import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
        "try:\n    runpy.run_module('orchestrator', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    command = swap_command(triton_url, target, output, *FAST_CLI)
    command[:3] = [sys.executable, "-c", code, "orchestrator"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_stays_flat_however_long_the_video(triton, tmp_path):
    short = moving_photo(tmp_path / "short.mp4", seconds=2.0)
    long = moving_photo(tmp_path / "long.mp4", seconds=10.0)
    short_peak = peak_memory_mb(triton.grpc_url, short, tmp_path / "a.mp4")
    long_peak = peak_memory_mb(triton.grpc_url, long, tmp_path / "b.mp4")
    assert long_peak < short_peak * 1.25 + 20, (short_peak, long_peak)
