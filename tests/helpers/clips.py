"""Test clips made with ffmpeg: the two-faces photo moving over a test pattern, with audio; probing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2

from tests.helpers.paths import TWO_FACES


def ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True, timeout=120)


def moving_photo(path: Path, *, size="480x360", seconds=2.0, rate=25, audio="sine", odd=False) -> Path:
    """The two-faces photo sliding over a test pattern, with a sine tone or espeak-ng speech.

    `odd` crops the picture to an odd size, which only a 4:4:4 pixel format can hold.
    """
    photo = path.parent / "photo.png"
    if not photo.exists():
        cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(TWO_FACES)), (300, 246)))
    inputs = [
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}:duration={seconds}",
        "-loop",
        "1",
        "-i",
        photo,
    ]
    if audio == "sine":
        inputs += ["-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=48000:duration={seconds}"]
    else:
        speech = path.parent / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-w", str(speech), "one two three four five six"], check=True, timeout=60
        )
        inputs += ["-i", speech]
    picture = "format=yuv444p,crop=iw-1:ih-1:0:0" if odd else "format=yuv420p"
    graph = f"[0][1]overlay=x='10+30*t':y='20+10*t':shortest=1,{picture}[v];[2]atrim=0:{seconds}[a]"
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
    if path.suffix == ".webm":
        codecs = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "35"]
        codecs += ["-c:a", "libopus"]
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]", *codecs, path)
    return path


def frame_count(path: Path) -> int:
    """Frames of the first video stream, counted by decoding them all with ffprobe."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames"]
        + ["-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(json.loads(result.stdout)["streams"][0]["nb_read_frames"])


def video_size(path: Path) -> tuple[int, int]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height"]
        + ["-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    stream = json.loads(result.stdout)["streams"][0]
    return stream["width"], stream["height"]
