"""Video probing, frame reading and frame writing with ffprobe/ffmpeg child processes.

Frames travel through pipes as raw bgr24 (never through image folders), one frame in memory at a time.
Inputs are opened as plain files in the containers of `VIDEO_DEMUXERS` only, every child runs under
memory and CPU limits suited to its job, and at most `limit_probes(n)` ffprobe children run at once.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import re
import resource
import secrets
import subprocess
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from orchestrator.choices import (
    ENCODER_PRESETS,
    VIDEO_CODECS,
    VIDEO_CONTAINERS,
    VIDEO_DEMUXERS,
    container_of,
    default_codec,
)
from orchestrator.errors import MediaError, OverLimit, UnsupportedMedia
from orchestrator.options import VideoOptions

FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"

_NVENC_PRESETS = ("p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7")  # indexed like ENCODER_PRESETS
# Audio codecs each muxer takes as a stream copy (None: any); other audio is re-encoded.
_COPYABLE_AUDIO: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "alac", "ac3", "opus"}),
    "mov": frozenset({"aac", "mp3", "alac", "ac3"}),  # ffmpeg 5.1 puts opus in mp4 only
    "webm": frozenset({"opus", "vorbis"}),
    "matroska": None,
}
_AUDIO_REENCODE = {"webm": ("-c:a", "libopus", "-b:a", "128k")}  # every other muxer: AAC
_AAC = ("-c:a", "aac", "-b:a", "192k")
_VFR_TOLERANCE = 0.01  # relative difference between avg_frame_rate and r_frame_rate
_STDERR_LINES = 50

# ffmpeg lines that only wrap the real cause, which an earlier line names.
_WRAPPER_LINE = re.compile(
    r"^(Conversion failed!|Exiting normally|Error (initializing|opening|while|marking|sending|closing)"
    r"|Could not write header|Terminating thread|Finishing stream|Nothing was written)",
    re.IGNORECASE,
)
_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")
_HINTS = {
    "moov atom not found": "moov atom not found: the file is incomplete",
    "partial file": "the file is truncated",
    "Cannot allocate memory": "it needed more memory than its limit",
}
_REFUSED_FORMAT = re.compile(r"^\[(\S+) @ 0x[0-9a-f]+\] Format not on whitelist", re.MULTILINE)
_MiB = 1 << 20


@dataclass(frozen=True)
class ChildLimits:
    """What one ffmpeg or ffprobe child may use: `memory` bytes of data (RLIMIT_DATA: heap and private
    mappings, not the address space threads only reserve) and `cpu_seconds` of CPU time (RLIMIT_CPU)."""

    memory: int
    cpu_seconds: int


# ffprobe reads headers and timestamps; a self-referencing playlist once grew it to gigabytes in seconds.
PROBE_LIMITS = ChildLimits(memory=512 * _MiB, cpu_seconds=30)
PROBE_TIMEOUT = 30.0  # wall-clock seconds of one ffprobe run
DEFAULT_PROBES = 4
# CPU seconds per megapixel of a frame. Measured on 2 cores: decoding H.264 took 0.003, encoding with
# x265's veryslow preset (the slowest choice) 0.9; the limits leave 60 and 10 times that.
_DECODE_CPU = 0.2
_ENCODE_CPU = 10.0
_CPU_STEP = 32  # an encoder's CPU limit is raised every this many frames it is given
_probes = threading.BoundedSemaphore(DEFAULT_PROBES)


def limit_probes(count: int) -> None:
    """Let at most `count` ffprobe (and other short) children run at once in this process."""
    global _probes
    _probes = threading.BoundedSemaphore(count)


def _coding_limits(width: int, height: int, frames: int, cpu_per_megapixel: float) -> ChildLimits:
    """The limits of an ffmpeg decoding or encoding `frames` frames of `width` x `height`.

    Memory grows with the frame size and the coder's threads (x264's veryslow preset took 730 MB at
    720p on 2 cores, its lookahead holding dozens of frames); CPU time with the pixels coded, at
    `cpu_per_megapixel` seconds per megapixel of a frame.
    """
    pixels = width * height
    threads = min(os.cpu_count() or 1, 16)
    memory = 512 * _MiB + pixels * (512 + 64 * threads)
    return ChildLimits(memory, 60 + math.ceil(frames * pixels / 1e6 * cpu_per_megapixel))


@dataclass(frozen=True)
class VideoLimits:
    """The largest video accepted: length, frames after constant-rate conversion, frame size, and the
    longest jump between two timestamps (which constant-rate conversion fills with repeated frames)."""

    seconds: float = 3600.0
    frames: int = 108_000  # an hour at 30 fps
    pixels: int = 4096 * 2160
    frame_gap: float = 10.0


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a video; width/height are the display size (rotation applied)."""

    path: Path
    container: str  # ffprobe's format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    duration: float  # seconds of the video stream (the container's when the stream states none)
    width: int
    height: int
    rotation: int  # clockwise degrees a player turns the coded picture for display: 0, 90, 180 or 270
    fps: Fraction  # avg_frame_rate, else r_frame_rate: the rate FrameReader delivers
    frame_count: int  # nb_frames, else round(duration * fps)
    variable_frame_rate: bool
    video_codec: str
    has_audio: bool
    audio_codec: str | None
    audio_duration: float | None
    stream: int = 0  # ffprobe's index of the video stream described, the one checked and decoded


def _input(path: Path) -> str:
    """The file protocol prefix stops a name like ``concat:a|b`` from being read as another protocol."""
    return f"file:{path}"


def input_args(path: Path) -> list[str]:
    """ffmpeg's and ffprobe's options opening `path` as an input: a plain file, in an accepted container.

    Without them a playlist, manifest or concat script is followed to the files or URLs it names.
    """
    return [
        *("-format_whitelist", ",".join(VIDEO_DEMUXERS), "-protocol_whitelist", "file"),
        *("-i", _input(path)),
    ]


def _reason(stderr: str, path: Path, status: int) -> str:
    """The last line of ffmpeg's stderr that names a cause, shortened to one readable phrase."""
    for hint, reason in _HINTS.items():
        if hint in stderr:
            return reason
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.replace("\r", "\n").splitlines()]
    meaningful = [line for line in lines if line and not _WRAPPER_LINE.match(line)]
    if not meaningful:
        if status < 0:
            return f"ffmpeg was killed by signal {-status}"
        return "ffmpeg stopped early" if status == 0 else f"ffmpeg exited with status {status}"
    reason = meaningful[-1]
    for prefix in (f"{_input(path)}: ", f"{path}: "):
        reason = reason.removeprefix(prefix)
    reason = reason[:1].lower() + reason[1:]
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _not_found(exe: str) -> MediaError:
    return MediaError(f"{exe} not found: install it (Debian: apt-get install ffmpeg)")


def _spawn(args: list[str], limits: ChildLimits, **options) -> subprocess.Popen:
    """Start a child under `limits`, in a process group of its own.

    The limits are set on the running child (prlimit) rather than in a pre-exec function, which is not
    safe in a threaded process; ffmpeg is still loading its libraries when they take effect. The group
    keeps a terminal's Ctrl-C away from ffmpeg, which would otherwise end a file early with status 0.
    """
    try:
        popen = subprocess.Popen(args, process_group=0, **options)
    except FileNotFoundError:
        raise _not_found(args[0]) from None
    _set_limit(popen.pid, resource.RLIMIT_DATA, limits.memory)
    _set_limit(popen.pid, resource.RLIMIT_CPU, limits.cpu_seconds)
    return popen


def _set_limit(pid: int, kind: int, value: int) -> None:
    """Set a child's soft limit, keeping the hard one inherited from this process, so that it can be
    raised again. Over its CPU limit ffmpeg gets SIGXCPU, which it takes as SIGTERM: it stops, and
    exits at once on the fourth, a second later each."""
    hard = resource.getrlimit(kind)[1]
    with contextlib.suppress(ProcessLookupError):  # it has already exited
        resource.prlimit(pid, kind, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


@contextlib.contextmanager
def _short_child(args: list[str], stderr: int = subprocess.PIPE) -> Iterator[subprocess.Popen]:
    """A short-lived child under PROBE_LIMITS, one of at most `limit_probes` at once, with its output as
    text; killed after PROBE_TIMEOUT seconds (then MediaError), and killed and reaped on leaving."""
    with _probes:
        popen = _spawn(
            args,
            PROBE_LIMITS,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            errors="replace",
        )
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            popen.kill()

        timer = threading.Timer(PROBE_TIMEOUT, expire)
        timer.start()
        try:
            yield popen
        finally:
            timer.cancel()
            popen.kill()
            for pipe in (popen.stdout, popen.stderr):
                if pipe is not None:
                    pipe.close()
            popen.wait()
    if expired.is_set():
        raise MediaError(f"{args[0]} took longer than its limit of {PROBE_TIMEOUT:g} s")


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    with _short_child(args) as popen:
        stdout, stderr = popen.communicate()
    return subprocess.CompletedProcess(args, popen.returncode, stdout, stderr)


class _Process:
    """An ffmpeg child whose stderr a thread drains, so a chatty ffmpeg can never block on a full pipe."""

    def __init__(
        self,
        args: list[str],
        limits: ChildLimits,
        *,
        stdin: int = subprocess.DEVNULL,
        stdout: int | None = None,
    ):
        self.popen = _spawn(args, limits, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        self._lines: deque[str] = deque(maxlen=_STDERR_LINES)
        self._drain = threading.Thread(target=self._read_stderr, args=(self.popen.stderr,), daemon=True)
        self._drain.start()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for line in stream:
            self._lines.append(line.decode(errors="replace"))

    def end(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for the exit (killing it after `timeout` seconds), reap it, close its pipes.

        Returns the exit status and the kept tail of stderr; safe to call again.
        """
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # flushing into a dead ffmpeg fails; it closes anyway
                    pipe.close()
        self._drain.join()
        self.popen.stderr.close()
        return self.popen.returncode, "".join(self._lines)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.end()


@functools.cache
def _decodable_codecs() -> frozenset[str]:
    """Codec names this ffmpeg has a decoder for (the D flag of ``ffmpeg -codecs``)."""
    listing = _run([FFMPEG, "-hide_banner", "-codecs"]).stdout
    return frozenset(m[2] for m in re.finditer(r"^ (\S{6}) (\S+)", listing, re.MULTILINE) if m[1][0] == "D")


def encoder_args(codec: str, muxer: str, crf: int, preset: str, odd_size: bool) -> list[str]:
    """ffmpeg's video encoding options; `preset` takes x264's names, mapped onto each encoder's scale."""
    speed = ENCODER_PRESETS.index(preset)
    family = VIDEO_CODECS[codec]
    if family in ("x264", "x265"):
        args = ["-preset", preset, "-crf", str(crf)]
        if family == "x265":
            args += ["-x265-params", "log-level=error"]
            if muxer in ("mp4", "mov"):
                args += ["-tag:v", "hvc1"]  # the tag Apple players require for HEVC
    elif family == "vpx":
        deadline = "realtime" if speed <= 2 else "good"
        args = ["-b:v", "0", "-crf", str(crf), "-deadline", deadline, "-cpu-used", str(8 - speed)]
        args += ["-row-mt", "1"]
    else:  # nvenc
        args = ["-preset", _NVENC_PRESETS[speed], "-rc", "vbr", "-cq", str(crf), "-b:v", "0"]
    # 4:2:0 halves the chroma planes, which an odd width or height cannot be.
    return ["-c:v", codec, *args, "-pix_fmt", "yuv444p" if odd_size else "yuv420p"]


@functools.cache
def available_video_encoders() -> frozenset[str]:
    """The supported encoders that this ffmpeg lists and can open.

    A trial encode is needed because builds list h264_nvenc whether or not an NVENC-capable GPU is there.
    """
    listing = _run([FFMPEG, "-hide_banner", "-encoders"]).stdout
    listed = set(re.findall(r"^ V\S{5} (\S+)", listing, re.MULTILINE))
    trial = [
        FFMPEG,
        "-nostdin",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=black:size=256x256:rate=1",
        "-frames:v",
        "1",
    ]

    def opens(codec: str) -> bool:
        args = [*trial, *encoder_args(codec, "null", 23, "ultrafast", False), "-f", "null", "-"]
        return _run(args).returncode == 0

    return frozenset(codec for codec in VIDEO_CODECS if codec in listed and opens(codec))


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _rate(value: object) -> Fraction | None:
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return rate if rate > 0 else None


def _ratio(rate: Fraction) -> str:
    return f"{rate.numerator}/{rate.denominator}"


def _stream_duration(stream: dict) -> float | None:
    seconds = _float(stream.get("duration"))
    if seconds is None:  # Matroska keeps the stream's end time as a tag, "HH:MM:SS.fraction"
        match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", stream.get("tags", {}).get("DURATION", ""))
        if match:
            end = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
            # A negative start is codec delay that decoding drops; a positive one is not part of the length.
            seconds = end - max(_float(stream.get("start_time")) or 0.0, 0.0)
    return seconds


def _rotation(stream: dict) -> int:
    """Clockwise display rotation. ffprobe's display-matrix angle is counterclockwise; the legacy rotate
    tag is clockwise."""
    for side_data in stream.get("side_data_list", []):
        angle = _float(side_data.get("rotation"))
        if angle is not None:
            return round(-angle / 90) % 4 * 90
    angle = _float(stream.get("tags", {}).get("rotate"))
    return 0 if angle is None else round(angle / 90) % 4 * 90


def _describe(path: Path) -> dict:
    """ffprobe's description of the format and streams; UnsupportedMedia for a container not accepted."""
    command = [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
    result = _run([*command, *input_args(path)])
    if result.returncode != 0:
        refused = _REFUSED_FORMAT.search(result.stderr)
        if refused:
            accepted = ", ".join(VIDEO_CONTAINERS)
            raise UnsupportedMedia(
                f"{path.name}: {refused[1]} is not a video container this service reads ({accepted})"
            )
        raise MediaError(f"{path.name}: cannot decode ({_reason(result.stderr, path, result.returncode)})")
    return json.loads(result.stdout)


def _check_length(path: Path, seconds: float, frames: int, limits: VideoLimits) -> None:
    """OverLimit naming the limit when the length or the frame count is over it."""
    if seconds > limits.seconds:
        raise OverLimit(f"{path.name}: {seconds:.1f} s long, over the limit of {limits.seconds:g} s")
    if frames > limits.frames:
        raise OverLimit(f"{path.name}: {frames:,} frames, over the limit of {limits.frames:,}")


def _check_timestamps(path: Path, stream: int, start: float, fps: Fraction, limits: VideoLimits) -> None:
    """OverLimit when the timestamps of the video stream of index `stream` leave a gap longer than
    `limits.frame_gap` (which constant-rate decoding fills with repeated frames; the first gap is from
    `start`, where decoding begins), or run longer or to more frames than the limits: a header can say
    anything.

    The timestamps are read as ffprobe streams them out, no further than the limits.
    """
    command = [FFPROBE, "-v", "error", "-select_streams", str(stream)]
    command += ["-show_entries", "packet=pts_time,dts_time"]
    command += ["-of", "csv=p=0", *input_args(path)]
    times = [0.0]
    with _short_child(command, stderr=subprocess.DEVNULL) as popen:
        for line in popen.stdout:
            stamps = [t for t in map(_float, line.split(",")) if t is not None]  # pts, else dts
            if stamps:
                times.append(stamps[0] - start)
                if times[-1] > limits.seconds or len(times) > limits.frames + 1:
                    break
    times.sort()  # from decode order, which B-frames shuffle, to presentation order
    _check_length(path, times[-1], max(len(times) - 1, math.ceil(times[-1] * fps)), limits)
    gap, at = max((later - earlier, earlier) for earlier, later in itertools.pairwise(times))
    if gap > limits.frame_gap:
        limit = limits.frame_gap
        raise OverLimit(
            f"{path.name}: its timestamps jump {gap:.1f} s at {at:.1f} s, over the limit of {limit:g} s"
        )


def probe(path: str | os.PathLike[str], limits: VideoLimits | None = None) -> VideoInfo:
    """Describe a video: MediaError when it is missing, not media, or has no video ffmpeg can decode;
    UnsupportedMedia when its container is not one of VIDEO_DEMUXERS; OverLimit when it is over `limits`.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path.name}: file not found")
    if not path.is_file():
        raise MediaError(f"{path.name}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path.name}: empty file")
    data = _describe(path)
    container = data.get("format", {}).get("format_name", "unknown")
    streams = data.get("streams", [])
    videos = [s for s in streams if s.get("codec_type") == "video"]
    video = next((s for s in videos if not s.get("disposition", {}).get("attached_pic")), None)
    if video is None:
        raise MediaError(f"{path.name}: no video stream" + (" (only an attached picture)" if videos else ""))
    codec = video.get("codec_name", "unknown")
    if codec not in _decodable_codecs():
        shown = video.get("codec_tag_string", codec) if codec == "unknown" else codec
        raise MediaError(f"{path.name}: unsupported video codec '{shown}'")
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise MediaError(f"{path.name}: video stream has no picture size")
    avg_rate, base_rate = _rate(video.get("avg_frame_rate")), _rate(video.get("r_frame_rate"))
    fps = avg_rate or base_rate
    if fps is None:
        raise MediaError(f"{path.name}: unknown frame rate")
    duration = _stream_duration(video) or _float(data.get("format", {}).get("duration"))
    if not duration or duration <= 0:
        raise MediaError(f"{path.name}: unknown duration")
    nb_frames = int(_float(video.get("nb_frames")) or 0)
    frame_count = nb_frames if nb_frames > 0 else round(duration * fps)
    if limits is not None:
        if width * height > limits.pixels:
            raise OverLimit(
                f"{path.name}: {width}x{height} frames are {width * height:,} pixels, "
                f"over the limit of {limits.pixels:,}"
            )
        _check_length(path, duration, max(frame_count, round(duration * fps)), limits)
        start = _float(data.get("format", {}).get("start_time")) or 0.0
        _check_timestamps(path, int(video.get("index", 0)), start, fps, limits)
    rotation = _rotation(video)
    if rotation in (90, 270):
        width, height = height, width
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return VideoInfo(
        path=path,
        container=container,
        duration=duration,
        width=width,
        height=height,
        rotation=rotation,
        fps=fps,
        frame_count=frame_count,
        variable_frame_rate=bool(
            avg_rate and base_rate and abs(avg_rate - base_rate) > _VFR_TOLERANCE * base_rate
        ),
        video_codec=codec,
        has_audio=audio is not None,
        audio_codec=None if audio is None else audio.get("codec_name", "unknown"),
        audio_duration=None if audio is None else _stream_duration(audio),
        stream=int(video.get("index", 0)),
    )


def _window(info: VideoInfo, start: float | None, end: float | None) -> tuple[float, float]:
    """The offset and length in seconds of [start, end) clipped to the video."""
    offset = start or 0.0
    stop = info.duration if end is None else min(end, info.duration)
    if offset < 0 or stop <= offset:
        raise MediaError(
            f"{info.path.name}: the window [{start}, {end}) is outside the video (0 to {info.duration:.3f} s)"
        )
    return offset, stop - offset


def reader_command(info: VideoInfo, offset: float, length: float, trim: bool) -> list[str]:
    """ffmpeg decoding `length` seconds from `offset` into raw constant-rate bgr24 frames on stdout."""
    args = [FFMPEG, "-nostdin", "-nostats", "-v", "error"]
    if offset > 0:
        args += ["-ss", f"{offset:.6f}"]
    args += input_args(info.path)
    if trim:
        args += ["-t", f"{length:.6f}"]
    video = [
        "-map",
        f"0:{info.stream}",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-fps_mode",
        "cfr",
        "-r",
        _ratio(info.fps),
    ]
    return [*args, *video, "pipe:1"]


class FrameReader:
    """The frames of a video as HxWx3 uint8 BGR arrays, display-oriented, at the probe's constant rate.

    A variable-frame-rate input comes out constant-rate (frames repeated or dropped by timestamp), so frame
    i belongs at i / fps, in step with the source's audio. Use it as a context manager.
    """

    def __init__(self, info: VideoInfo, start: float | None = None, end: float | None = None) -> None:
        self._process: _Process | None = None
        offset, length = _window(info, start, end)
        self.info = info
        # ffmpeg emits every frame slot that starts inside the window; the slack absorbs Matroska's
        # millisecond timestamps.
        trimmed = math.ceil(length * info.fps - 0.05)
        self._expected = info.frame_count if start is None and end is None else trimmed
        # Constant rate fills gaps between timestamps with repeated frames; beyond a second more than
        # the header declares, the file is not what probing saw.
        self._most = self._expected + math.ceil(info.fps) + 1
        self._frames = 0
        self._process = _Process(
            reader_command(info, offset, length, trim=end is not None),
            _coding_limits(info.width, info.height, max(self._expected, 1), _DECODE_CPU),
            stdout=subprocess.PIPE,
        )

    @property
    def expected_frames(self) -> int:
        """How many frames the reader should yield (exact for constant-rate files; for progress bars)."""
        return self._expected

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self._process is None:
            raise StopIteration
        frame = np.empty((self.info.height, self.info.width, 3), np.uint8)
        view = memoryview(frame.reshape(-1))
        filled = 0
        while filled < len(view):
            count = self._process.popen.stdout.readinto(view[filled:])
            if not count:
                self._finish(partial=filled > 0)
                raise StopIteration
            filled += count
        self._frames += 1
        if self._frames > self._most:
            self.close()
            raise MediaError(
                f"{self.info.path.name}: cannot decode (its timestamps run past the {self._expected} frames "
                "its header declares)"
            )
        return frame

    def _finish(self, partial: bool) -> None:
        """At the end of the output: raise when ffmpeg failed, or reported errors and fell short."""
        status, stderr = self._process.end(timeout=30)
        self._process = None
        # ffmpeg exits 0 on a truncated file, logging errors; a frame count off by one is estimate noise.
        short = self._frames < self._expected - 1
        if status != 0 or partial or (short and stderr.strip()):
            reason = _reason(stderr, self.info.path, status)
            raise MediaError(f"{self.info.path.name}: cannot decode ({reason})")

    def close(self) -> None:
        """Stop ffmpeg early or late, reap it and close its pipes; safe to call again."""
        if self._process is not None:
            self._process.kill()
            self._process = None

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


@dataclass(frozen=True)
class Encoding:
    """How a FrameWriter encodes: the video encoder, its quality and speed, the output's muxer."""

    codec: str
    muxer: str
    crf: int
    preset: str


def writer_command(
    output: Path,
    width: int,
    height: int,
    fps: Fraction,
    encoding: Encoding,
    audio: tuple[VideoInfo, float, float] | None = None,
) -> list[str]:
    """ffmpeg encoding raw bgr24 frames from stdin into `output`, with `audio` = (video, offset, length)."""
    args = [FFMPEG, "-nostdin", "-nostats", "-v", "error", "-n", "-f", "rawvideo", "-pix_fmt", "bgr24"]
    args += ["-s", f"{width}x{height}", "-r", _ratio(fps), "-i", "pipe:0"]
    maps = ["-map", "0:v:0"]
    audio_args: list[str] = []
    if audio is not None:
        source, offset, length = audio
        if offset > 0:
            args += ["-ss", f"{offset:.6f}"]
        args += ["-t", f"{length:.6f}", *input_args(source.path)]
        maps += ["-map", "1:a:0?"]
        copyable = _COPYABLE_AUDIO.get(encoding.muxer, frozenset())
        copy = copyable is None or source.audio_codec in copyable
        audio_args = ["-c:a", "copy"] if copy else list(_AUDIO_REENCODE.get(encoding.muxer, _AAC))
    odd_size = width % 2 == 1 or height % 2 == 1
    args += [*maps, *encoder_args(encoding.codec, encoding.muxer, encoding.crf, encoding.preset, odd_size)]
    args += audio_args
    if encoding.muxer in ("mp4", "mov"):
        args += ["-movflags", "+faststart"]
    return [*args, "-f", encoding.muxer, _input(output)]


class FrameWriter:
    """Encodes HxWx3 uint8 BGR frames into a video, with the audio of `audio_from` trimmed to [start, end).

    The audio is cut to the video's window rather than with -shortest, so the video's frames define the
    length. ffmpeg writes a hidden temporary file beside the output, renamed onto it only on success; an
    exception inside the ``with`` block (KeyboardInterrupt included) leaves neither behind.
    `FrameWriter.like(info, ...)` writes frames of the same size and rate as a probed video, with its audio.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        fps: Fraction,
        audio_from: VideoInfo | None = None,
        options: VideoOptions = VideoOptions(),
    ) -> None:
        self._process: _Process | None = None
        self.output = Path(output)
        name = self.output.name
        container = container_of(self.output.suffix)
        if container is None:
            choices = ", ".join(f".{c}" for c in VIDEO_CONTAINERS)
            raise MediaError(f"{name}: unsupported output container (use {choices})")
        if width <= 0 or height <= 0 or fps <= 0:
            raise ValueError(f"bad frame geometry {width}x{height} at {fps} fps")
        codec = options.video_codec or default_codec(container)
        available = available_video_encoders()
        if codec not in available:
            raise MediaError(
                f"{name}: video encoder '{codec}' is not available here "
                f"(available: {', '.join(sorted(available)) or 'none'})"
            )
        if (width % 2 == 1 or height % 2 == 1) and VIDEO_CODECS[codec] == "nvenc":
            raise MediaError(f"{name}: {codec} cannot encode the odd size {width}x{height}")
        self.width, self.height = width, height
        self._frames = 0
        self._temp = self.output.with_name(f".{name}.{secrets.token_hex(4)}.part{self.output.suffix}")
        audio = None
        if audio_from is not None and audio_from.has_audio:
            audio = (audio_from, *_window(audio_from, options.start, options.end))
        encoding = Encoding(codec, VIDEO_CONTAINERS[container].muxer, options.crf, options.preset)
        command = writer_command(self._temp, width, height, fps, encoding, audio)
        self._process = _Process(command, self._limits(), stdin=subprocess.PIPE)

    @classmethod
    def like(
        cls, info: VideoInfo, output: str | os.PathLike[str], options: VideoOptions = VideoOptions()
    ) -> FrameWriter:
        """A writer of frames sized and timed like `info`'s, with its audio cut to the options' window."""
        return cls(
            output, width=info.width, height=info.height, fps=info.fps, audio_from=info, options=options
        )

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame for encoding; MediaError on a wrong shape or dtype, or when ffmpeg failed."""
        if self._process is None:
            raise MediaError(f"{self.output.name}: writer is closed")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise MediaError(
                f"{self.output.name}: frame of shape {frame.shape} and dtype {frame.dtype}, "
                f"expected ({self.height}, {self.width}, 3) uint8"
            )
        if self._frames % _CPU_STEP == 0:
            _set_limit(self._process.popen.pid, resource.RLIMIT_CPU, self._limits().cpu_seconds)
        try:
            self._process.popen.stdin.write(np.ascontiguousarray(frame).data)
        except OSError:  # BrokenPipeError: ffmpeg gave up, its stderr says why
            self._fail(timeout=10)
        self._frames += 1

    def _limits(self) -> ChildLimits:
        """The encoder's limits, its CPU time for the frames given so far and the next few."""
        return _coding_limits(self.width, self.height, self._frames + _CPU_STEP, _ENCODE_CPU)

    def _fail(self, timeout: float | None) -> None:
        status, stderr = self._process.end(timeout)
        self.abort()
        raise MediaError(f"{self.output.name}: cannot encode ({_reason(stderr, self._temp, status)})")

    def close(self) -> None:
        """Finish the file and move it onto the output path; safe to call again."""
        if self._process is None:
            return
        try:
            if self._frames == 0:
                raise MediaError(f"{self.output.name}: no frames were written")
            with contextlib.suppress(OSError):  # ffmpeg died; its exit status and stderr tell why
                self._process.popen.stdin.close()
            if self._process.popen.wait() != 0:
                self._fail(timeout=None)
            self._process.end()
            self._process = None
            os.replace(self._temp, self.output)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary file; the output path is left untouched."""
        if self._process is not None:
            self._process.kill()
            self._process = None
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        if self._process is not None:
            self.abort()
