"""orchestrator.media against the real ffmpeg/ffprobe, on tiny clips generated into a temporary folder."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import psutil
import pytest

from orchestrator import media
from orchestrator.errors import InputError, UnsupportedMedia
from orchestrator.media import FrameReader, FrameWriter, MediaError, VideoInfo, probe
from orchestrator.options import VideoOptions, parse_options
from tests.helpers.clips import ffmpeg
from tests.helpers.processes import children_running, sigint_default


def _testsrc(size: str, rate: int, seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def _sine(seconds: float) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]


X264 = ["-c:v", "libx264", "-preset", "ultrafast"]


@pytest.fixture(scope="session")
def media_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    clips = {
        name: folder / file
        for name, file in [
            ("mp4", "h264_aac.mp4"),
            ("webm", "vp9_opus.webm"),
            ("odd", "odd_161x121.mp4"),
            ("rotated", "rotated.mp4"),
            ("vfr", "vfr.mp4"),
        ]
    }
    ffmpeg(
        *_testsrc("320x240", 25, 2),
        *_sine(2),
        *X264,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        clips["mp4"],
    )
    ffmpeg(
        *_testsrc("160x120", 24, 2),
        *_sine(2),
        "-c:v",
        "libvpx-vp9",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "0",
        "-crf",
        "40",
        "-c:a",
        "libopus",
        clips["webm"],
    )
    # testsrc2 and crop on 4:2:0 round sizes down to even numbers.
    ffmpeg(
        *_testsrc("176x144", 15, 1),
        "-vf",
        "format=yuv444p,crop=161:121:0:0",
        *X264,
        "-pix_fmt",
        "yuv444p",
        clips["odd"],
    )
    # A white block in the top-left corner shows which way the player turns the picture.
    upright = folder / "upright.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=black:size=160x120:rate=10:duration=1",
        "-vf",
        "drawbox=x=0:y=0:w=40:h=30:color=white:t=fill",
        *X264,
        "-pix_fmt",
        "yuv420p",
        upright,
    )
    # ffmpeg 5.1 has no -display_rotation; the legacy tag only takes effect on a stream copy.
    ffmpeg("-i", upright, "-c", "copy", "-metadata:s:v", "rotate=90", clips["rotated"])
    # 30 fps for one second, then every third frame: 40 frames in 1.93 s, r_frame_rate 30, average 20.7.
    ffmpeg(
        *_testsrc("160x120", 30, 2),
        *_sine(2),
        "-vf",
        r"select='lt(n\,30)+not(mod(n\,3))'",
        "-fps_mode",
        "vfr",
        *X264,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        clips["vfr"],
    )
    return clips


@pytest.fixture(scope="session")
def infos(media_clips: dict[str, Path]) -> dict[str, VideoInfo]:
    return {name: probe(path) for name, path in media_clips.items()}


def _read_all(info: VideoInfo, start: float | None = None, end: float | None = None) -> list[np.ndarray]:
    with FrameReader(info, start, end) as reader:
        return list(reader)


def _read_counted(
    info: VideoInfo,
    start: float | None = None,
    end: float | None = None,
) -> tuple[list[np.ndarray], int]:
    """The frames and the reader's expected_frames."""
    with FrameReader(info, start, end) as reader:
        return list(reader), reader.expected_frames


def _assert_one_line(error: pytest.ExceptionInfo[MediaError], name: str, *phrases: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(f"{name}: "), message
    for phrase in phrases:
        assert phrase in message, message


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b).mean())


def _ffmpeg_children() -> list[psutil.Process]:
    """This process's ffmpeg children (the session's tritonserver is a child too, and stays)."""
    return children_running(os.getpid(), "ffmpeg")


def _no_children() -> bool:
    return not _ffmpeg_children()


# -- probe -------------------------------------------------------------------------------------------------

EXPECTED = {
    # name: width, height, fps, frame_count, duration, video codec, audio codec
    "mp4": (320, 240, Fraction(25), 50, 2.0, "h264", "aac"),
    "webm": (160, 120, Fraction(24), 48, 2.0, "vp9", "opus"),
    "odd": (161, 121, Fraction(15), 15, 1.0, "h264", None),
    # ffmpeg 5.1 turns the tag rotate=90 into a display matrix that players apply as a 90° counterclockwise
    # turn (270° clockwise): the coded 160x120 is shown as 120x160.
    "rotated": (120, 160, Fraction(10), 10, 1.0, "h264", None),
    "vfr": (160, 120, Fraction(600, 29), 40, 1.933, "h264", "aac"),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_probe_reports_the_clip(infos: dict[str, VideoInfo], name: str) -> None:
    width, height, fps, frames, duration, video_codec, audio_codec = EXPECTED[name]
    info = infos[name]
    assert (info.width, info.height) == (width, height)
    assert info.fps == fps
    assert info.frame_count == frames
    assert info.duration == pytest.approx(duration, abs=0.01)
    assert info.video_codec == video_codec
    assert info.has_audio == (audio_codec is not None)
    assert info.audio_codec == audio_codec
    if audio_codec:
        assert info.audio_duration == pytest.approx(2.0, abs=0.03)
    else:
        assert info.audio_duration is None
    assert info.variable_frame_rate == (name == "vfr")
    assert info.rotation == (270 if name == "rotated" else 0)
    assert "webm" in info.container if name == "webm" else "mp4" in info.container


# -- FrameReader ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXPECTED)
def test_reader_yields_every_frame(infos: dict[str, VideoInfo], name: str) -> None:
    info = infos[name]
    frames, expected = _read_counted(info)
    assert len(frames) == expected == info.frame_count == EXPECTED[name][3]
    assert all(f.shape == (info.height, info.width, 3) and f.dtype == np.uint8 for f in frames)
    frames[0][0, 0] = 1  # the frames are the caller's to modify


def test_reader_turns_frames_upright(infos: dict[str, VideoInfo]) -> None:
    frame = _read_all(infos["rotated"])[0]
    assert frame.shape == (160, 120, 3)
    # Turned 90° counterclockwise, the top-left block lands bottom-left.
    assert frame[150, 10].min() > 200
    assert frame[10, 10].max() < 50 and frame[10, 110].max() < 50 and frame[150, 110].max() < 50


def test_reader_makes_variable_rate_constant(infos: dict[str, VideoInfo]) -> None:
    info = infos["vfr"]
    frames = _read_all(info)
    assert len(frames) == round(info.duration * info.fps) == 40
    # The 10 fps second half, sampled at 20.7 fps, repeats source frames; the 30 fps half drops some.
    second_half = frames[22:]
    assert sum(np.array_equal(a, b) for a, b in itertools.pairwise(second_half)) >= 5
    assert not any(np.array_equal(a, b) for a, b in itertools.pairwise(frames[:18]))


@pytest.mark.parametrize(
    ("name", "start", "end", "expected"),
    # Every frame slot starting inside [start, end) counts: 0.8 s at 24 fps is 19.2 slots, so 20 frames.
    [("mp4", 0.4, 1.4, 25), ("webm", 0.3, 1.1, 20), ("mp4", 1.2, None, 20), ("webm", 0.5, None, 36)],
)
def test_reader_trims(
    infos: dict[str, VideoInfo], name: str, start: float, end: float | None, expected: int
) -> None:
    info = infos[name]
    full = _read_all(info)
    trimmed, estimate = _read_counted(info, start, end)
    assert len(trimmed) == estimate == expected
    first = round(start * info.fps)
    assert np.array_equal(trimmed[0], full[first])
    assert np.array_equal(trimmed[-1], full[first + expected - 1])


def test_reader_rejects_an_empty_window(infos: dict[str, VideoInfo]) -> None:
    with pytest.raises(MediaError, match="outside"):
        FrameReader(infos["mp4"], start=1.0, end=1.0)
    with pytest.raises(MediaError, match="outside"):
        FrameReader(infos["mp4"], start=5.0)


def test_reader_stopped_early_leaves_no_process(infos: dict[str, VideoInfo]) -> None:
    with FrameReader(infos["mp4"]) as reader:
        for index, _ in enumerate(reader):
            if index == 2:
                break
    assert _no_children()
    with pytest.raises(RuntimeError), FrameReader(infos["mp4"]) as reader:
        next(reader)
        raise RuntimeError("consumer failed")
    assert _no_children()
    assert list(reader) == []


# -- FrameWriter ---------------------------------------------------------------------------------------------

ROUND_TRIPS = [
    # source, output suffix, codec, expected video codec, expected audio codec (copy or re-encode)
    ("mp4", ".mp4", None, "h264", "aac"),
    ("webm", ".webm", None, "vp9", "opus"),
    ("mp4", ".webm", None, "vp9", "opus"),
    ("webm", ".mp4", None, "h264", "opus"),
    ("webm", ".mov", "libx265", "hevc", "aac"),
    ("odd", ".mp4", None, "h264", None),
    ("rotated", ".mkv", None, "h264", None),
    ("vfr", ".mkv", None, "h264", "aac"),
]


@pytest.mark.parametrize(("name", "suffix", "codec", "video_codec", "audio_codec"), ROUND_TRIPS)
def test_round_trip_keeps_frames_timing_and_audio(
    infos: dict[str, VideoInfo],
    tmp_path: Path,
    name: str,
    suffix: str,
    codec: str | None,
    video_codec: str,
    audio_codec: str | None,
) -> None:
    source = infos[name]
    output = tmp_path / f"out{suffix}"
    frames = _read_all(source)
    with FrameWriter.like(source, output, VideoOptions(video_codec=codec, preset="ultrafast")) as writer:
        for frame in frames:
            writer.write(frame)
    result = probe(output)
    frame_time = float(1 / source.fps)
    assert (result.width, result.height, result.rotation) == (source.width, source.height, 0)
    assert result.fps == source.fps
    assert abs(result.frame_count - len(frames)) <= 1
    assert abs(result.duration - len(frames) * frame_time) <= frame_time
    assert result.video_codec == video_codec
    assert result.audio_codec == audio_codec
    if audio_codec:
        assert abs(result.audio_duration - result.duration) <= frame_time
    decoded = _read_all(result)
    assert len(decoded) == len(frames)
    assert max(_diff(a, b) for a, b in zip(frames, decoded, strict=True)) < 6  # colours not swapped
    if name == "odd":
        pix_fmt = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=pix_fmt",
                "-of",
                "csv=p=0",
                output,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert pix_fmt == "yuv444p"


@pytest.mark.parametrize(("name", "start", "end"), [("mp4", 0.4, 1.4), ("webm", 0.5, None)])
def test_trimmed_round_trip_trims_audio_alike(
    infos: dict[str, VideoInfo], tmp_path: Path, name: str, start: float, end: float | None
) -> None:
    source = infos[name]
    output = tmp_path / "trimmed.mp4"
    with (
        FrameReader(source, start, end) as reader,
        FrameWriter.like(source, output, VideoOptions(start=start, end=end, preset="ultrafast")) as writer,
    ):
        for frame in reader:
            writer.write(frame)
    result = probe(output)
    frame_time = float(1 / source.fps)
    assert result.frame_count == reader.expected_frames
    assert result.duration == pytest.approx((end or source.duration) - start, abs=frame_time)
    assert result.has_audio
    assert abs(result.audio_duration - result.duration) <= frame_time


def _writer(output: Path, codec: str | None = None) -> FrameWriter:
    options = VideoOptions(video_codec=codec, preset="ultrafast")
    return FrameWriter(output, width=64, height=48, fps=Fraction(25), options=options)


BLACK = np.zeros((48, 64, 3), np.uint8)


def test_writer_output_appears_only_when_finished(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    with _writer(output) as writer:
        for _ in range(10):
            writer.write(BLACK)
        assert not output.exists()
        deadline = time.monotonic() + 10
        while not (temporary := list(tmp_path.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.01)  # ffmpeg opens its output after probing the input, on its own schedule
        assert len(temporary) == 1, temporary
        assert temporary[0].name.startswith(".out.mp4.") and temporary[0].name.endswith(".part.mp4")
        assert not output.exists()
    assert list(tmp_path.iterdir()) == [output]
    assert probe(output).frame_count == 10
    assert _no_children()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_writer_interrupted_leaves_nothing(tmp_path: Path, error: type[BaseException]) -> None:
    with pytest.raises(error), _writer(tmp_path / "out.mp4") as writer:
        for _ in range(10):
            writer.write(BLACK)
        raise error()
    assert list(tmp_path.iterdir()) == []
    assert _no_children()


def test_writer_failure_keeps_the_previous_output(tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    output.write_bytes(b"previous")
    with pytest.raises(RuntimeError), _writer(output) as writer:
        writer.write(BLACK)
        raise RuntimeError
    assert output.read_bytes() == b"previous"
    with _writer(output) as writer:
        writer.write(BLACK)
    assert probe(output).frame_count == 1
    assert list(tmp_path.iterdir()) == [output]


def test_writer_ffmpeg_stopped_by_sigint_leaves_nothing(tmp_path: Path) -> None:
    """On SIGINT ffmpeg finishes its file and exits 0; frames it did not take must not be published."""
    output = tmp_path / "out.mp4"
    with sigint_default(), pytest.raises(MediaError) as error, _writer(output) as writer:
        writer.write(BLACK)
        (child,) = _ffmpeg_children()
        child.send_signal(signal.SIGINT)
        child.wait(10)
        for _ in range(100):
            writer.write(BLACK)
    _assert_one_line(error, "out.mp4", "cannot encode (ffmpeg stopped early)")
    assert list(tmp_path.iterdir()) == []
    assert _no_children()


def test_writer_reports_ffmpeg_refusal(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as error, _writer(tmp_path / "out.mov", codec="libvpx-vp9") as writer:
        for _ in range(20):
            writer.write(BLACK)
    _assert_one_line(error, "out.mov", "cannot encode (vp9 only supported in MP4")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("frame", "phrase"),
    [
        (np.zeros((48, 64), np.uint8), "shape (48, 64)"),
        (np.zeros((48, 64, 3), np.float32), "float32"),
        (np.zeros((64, 48, 3), np.uint8), "expected (48, 64, 3) uint8"),
    ],
)
def test_writer_rejects_bad_frames(tmp_path: Path, frame: np.ndarray, phrase: str) -> None:
    with pytest.raises(MediaError) as error, _writer(tmp_path / "out.mp4") as writer:
        writer.write(frame)
    _assert_one_line(error, "out.mp4", phrase)
    assert list(tmp_path.iterdir()) == []


def test_writer_without_frames_fails(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as error, _writer(tmp_path / "out.mp4"):
        pass
    _assert_one_line(error, "out.mp4", "no frames")
    assert list(tmp_path.iterdir()) == []


def test_writer_takes_a_non_contiguous_frame(tmp_path: Path) -> None:
    output = tmp_path / "out.mkv"
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :32, 2] = 255  # left half red, in BGR
    mirrored = frame[:, ::-1]  # a view with negative strides: right half red
    with _writer(output, codec="libx264") as writer:
        writer.write(mirrored)
    (decoded,) = _read_all(probe(output))
    assert _diff(decoded, mirrored) < 5 < _diff(decoded, frame)


def test_available_video_encoders() -> None:
    encoders = media.available_video_encoders()
    assert {"libx264", "libx265", "libvpx-vp9"} <= encoders
    if shutil.which("nvidia-smi") is None:
        assert "h264_nvenc" not in encoders  # listed by Debian's build, but there is no GPU to open


def test_writer_refuses_an_unavailable_encoder(tmp_path: Path) -> None:
    if "h264_nvenc" not in media.available_video_encoders():  # with an NVENC GPU it is available
        with pytest.raises(MediaError) as error:
            _writer(tmp_path / "out.mp4", codec="h264_nvenc")
        _assert_one_line(error, "out.mp4", "'h264_nvenc' is not available", "libx264", "libvpx-vp9")
    with pytest.raises(InputError) as error:  # refused with the options, before any writer exists
        parse_options(VideoOptions, {"video_codec": "mpeg4"})
    assert (
        "video_codec" in str(error.value) and "'mpeg4'" in str(error.value) and "libx264" in str(error.value)
    )
    with pytest.raises(MediaError) as error:
        _writer(tmp_path / "out.avi")
    _assert_one_line(error, "out.avi", "unsupported output container")
    assert list(tmp_path.iterdir()) == []


# -- bad inputs ----------------------------------------------------------------------------------------------


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as error:
        probe(tmp_path / "target.mp4")
    _assert_one_line(error, "target.mp4", "file not found")


def test_probe_empty_file(tmp_path: Path) -> None:
    (tmp_path / "target.mp4").touch()
    with pytest.raises(MediaError) as error:
        probe(tmp_path / "target.mp4")
    _assert_one_line(error, "target.mp4", "empty file")


def test_probe_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(1).bytes(65536))
    with pytest.raises(MediaError) as error:
        probe(path)
    _assert_one_line(error, "noise.bin", "cannot decode (invalid data found when processing input)")


def test_probe_truncated_mp4_without_faststart(media_clips: dict[str, Path], tmp_path: Path) -> None:
    """With the index (moov) at the end, as ffmpeg writes mp4 by default, a cut file has no index."""
    whole = tmp_path / "whole.mp4"
    ffmpeg("-i", media_clips["mp4"], "-c", "copy", whole)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(MediaError) as error:
        probe(cut)
    _assert_one_line(error, "cut.mp4", "cannot decode (moov atom not found")


def test_reader_raises_on_truncated_mp4_with_faststart(media_clips: dict[str, Path], tmp_path: Path) -> None:
    """With the index first, probing succeeds and reports all 50 frames; ffmpeg then decodes about half,
    logs 'partial file' and exits 0. The reader must turn that into an error, not a short video."""
    data = media_clips["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = probe(cut)
    assert info.frame_count == 50
    yielded = 0
    with pytest.raises(MediaError) as error, FrameReader(info) as reader:
        for _ in reader:
            yielded += 1
    assert 0 < yielded < 50
    _assert_one_line(error, "cut.mp4", "cannot decode (the file is truncated)")
    assert _no_children()


def test_probe_still_image(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=64x64", "-frames:v", "1", path)
    with pytest.raises(UnsupportedMedia) as error:
        probe(path)
    _assert_one_line(error, "face.png", "png_pipe is not a video container this service reads (mp4, mov")


def test_probe_audio_only(tmp_path: Path) -> None:
    path = tmp_path / "voice.m4a"
    ffmpeg(*_sine(1), "-c:a", "aac", path)
    with pytest.raises(MediaError) as error:
        probe(path)
    _assert_one_line(error, "voice.m4a", "no video stream")


def test_probe_cover_art_only(tmp_path: Path) -> None:
    path = tmp_path / "song.m4a"
    ffmpeg(
        *_sine(1),
        "-f",
        "lavfi",
        "-i",
        "color=red:size=64x64:duration=0.1",
        "-map",
        "0",
        "-map",
        "1",
        "-frames:v",
        "1",
        "-c:a",
        "aac",
        "-c:v",
        "mjpeg",
        "-disposition:v",
        "attached_pic",
        path,
    )
    with pytest.raises(MediaError) as error:
        probe(path)
    _assert_one_line(error, "song.m4a", "no video stream (only an attached picture)")


@pytest.mark.parametrize(("fourcc", "shown"), [(b"AVS2", "avs2"), (b"ZZZZ", "ZZZZ")])
def test_probe_undecodable_codec(tmp_path: Path, fourcc: bytes, shown: str) -> None:
    """A Matroska stream stored as a Video for Windows codec is named by its fourcc: AVS2 is a codec
    ffprobe knows but this ffmpeg cannot decode, ZZZZ one it does not know at all. The muxer writes
    neither, so a HuffYUV stream's fourcc is patched afterwards."""
    placeholder = tmp_path / "placeholder.mkv"
    ffmpeg(*_testsrc("64x48", 5, 1), "-c:v", "huffyuv", "-pix_fmt", "yuv422p", placeholder)
    path = tmp_path / "strange.mkv"
    data = placeholder.read_bytes()
    assert data.count(b"HFYU") == 1
    path.write_bytes(data.replace(b"HFYU", fourcc))
    with pytest.raises(MediaError) as error:
        probe(path)
    _assert_one_line(error, "strange.mkv", f"unsupported video codec '{shown}'")


def test_missing_binaries_are_named(infos: dict[str, VideoInfo], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(media, "FFPROBE", "ffprobe-not-installed")
    with pytest.raises(MediaError, match=r"^ffprobe-not-installed not found: install it \(Debian: apt-get"):
        probe(infos["mp4"].path)
    monkeypatch.setattr(media, "FFMPEG", "ffmpeg-not-installed")
    with pytest.raises(MediaError, match=r"^ffmpeg-not-installed not found: install it"):
        FrameReader(infos["mp4"])
