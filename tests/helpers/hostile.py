"""Hostile inputs, made the way an attacker makes them: playlists, manifests and scripts that name other
files, videos whose timestamps jump, images whose headers declare far more pixels than they hold."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.clips import ffmpeg


def referencing(secret: str) -> dict[str, tuple[bytes, str]]:
    """Inputs of every demuxer family that reads further files or URLs, each naming `secret` (a path
    or a name beside the input), with the demuxer ffmpeg 5.1 recognises it as (None: it probes as none).
    """
    return {
        "hls media playlist": (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{secret}\n#EXT-X-ENDLIST\n".encode(),
            "hls",
        ),
        "hls init section": (
            f'#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI="{secret}"\n#EXTINF:2.0,\n{secret}\n'.encode(),
            "hls",
        ),
        "hls key file": (
            b'#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-KEY:METHOD=AES-128,URI="file:///etc/passwd"\n'
            + f"#EXTINF:2.0,\n{secret}\n".encode(),
            "hls",
        ),
        "hls data url": (
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\ndata:video/mp4;base64,AAAA\n#EXT-X-ENDLIST\n",
            "hls",
        ),
        "dash manifest": (
            (
                '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
                'mediaPresentationDuration="PT1S" minBufferTime="PT1S" '
                'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011"><Period>'
                '<AdaptationSet mimeType="video/mp4"><Representation id="1" bandwidth="1" width="320" '
                f'height="240"><BaseURL>{secret}</BaseURL><SegmentBase/></Representation>'
                "</AdaptationSet></Period></MPD>\n"
            ).encode(),
            "dash",
        ),
        "ffconcat script": (f"ffconcat version 1.0\nfile '{secret}'\n".encode(), "concat"),
        "ffconcat of protocols": (
            f"ffconcat version 1.0\nfile 'subfile,,start,0,end,0,,:{secret}'\n".encode()
            + f"file 'concat:{secret}|{secret}'\n".encode(),
            "concat",
        ),
        "sdp session": (
            b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
            b"m=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n",
            "sdp",
        ),
        "imf composition playlist": (
            (
                '<?xml version="1.0"?>\n<CompositionPlaylist xmlns="http://www.smpte-ra.org/schemas/2067-3/2016">'
                f"<ContentTitle>x</ContentTitle><EditRate>25 1</EditRate><Locator>{secret}</Locator>"
                "</CompositionPlaylist>\n"
            ).encode(),
            None,
        ),
    }


def self_referencing(name: str, variants: int = 1) -> bytes:
    """A playlist whose variants are itself: without limits, ffprobe grew to gigabytes in seconds."""
    return b"#EXTM3U\n" + f"#EXT-X-STREAM-INF:BANDWIDTH=1\n{name}\n".encode() * variants


def recursive_concat(name: str) -> bytes:
    return f"ffconcat version 1.0\nfile '{name}'\nfile '{name}'\n".encode()


def timestamp_jump(
    path: Path, *, at: int = 4, to: float = 36000, only: bool = False, lead: bool = False, audio: bool = False
) -> Path:
    """A 10-frame clip (10 fps) whose timestamps jump by `to` seconds at frame `at`; `only`: frame `at`
    alone jumps, to `to` (the issue's recipe); `lead`: every frame is late by `to`, so the video starts
    `to` seconds after its audio."""
    move = f"if(gte(N,{at}),PTS+{to}/TB,PTS)"
    if only:
        move = f"if(eq(N,{at}),{to}/TB,PTS)"
    elif lead:
        move = f"PTS+{to}/TB"
    inputs = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=1"]
    if audio:
        inputs += ["-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac"]
    x264 = ["-c:v", "libx264", "-preset", "ultrafast"]  # no B-frames, which would reorder the timestamps
    ffmpeg(*inputs, "-vf", f"setpts='{move}'", "-fps_mode", "passthrough", *x264, path)
    return path


def lying_duration(path: Path, seconds: int) -> Path:
    """A Matroska clip whose header says 1 s while its frames span `seconds` s, 4 s apart."""
    ffmpeg(
        *("-f", "lavfi", "-i", f"testsrc2=size=64x48:rate=10:duration={seconds / 40:g}"),
        *("-vf", "setpts=N*4/TB", "-fps_mode", "passthrough", "-c:v", "libx264", path),
    )
    data = path.read_bytes()
    tag = _duration_tag(data)
    data = data.replace(tag, b"00:00:01.000000000"[: len(tag)].ljust(len(tag), b"0"))
    at = data.index(b"\x44\x89\x88")  # the segment's Duration element, an 8-byte float in milliseconds
    data = data[: at + 3] + struct.pack(">d", 1000.0) + data[at + 11 :]
    path.write_bytes(data)
    return path


def _duration_tag(data: bytes) -> bytes:
    """The video track's DURATION tag value, HH:MM:SS.nnnnnnnnn."""
    at = data.index(b"DURATION")
    start = data.index(b"00:", at)
    return data[start : start + 18]


def png_declaring(width: int, height: int, decodable: bool = True) -> bytes:
    """A small 1-bit PNG whose header declares `width` x `height`. Decodable: all its rows are there, all
    zero (they compress about a thousandfold), so it decodes to the full declared size; else it holds
    one row, enough for a header that is refused unread."""
    row = b"\x00" + bytes((width + 7) // 8)
    pixels = zlib.compressobj(9)
    data = b"".join(pixels.compress(row) for _ in range(height if decodable else 1)) + pixels.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def image_in(format: str) -> bytes:
    """A small picture in one of Pillow's formats (BMP, TIFF, GIF, EPS, ...)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buffer, format)
    return buffer.getvalue()


def _scan_ends(data: bytes) -> list[int]:
    """Where each scan of a JPEG (its SOS segment and the entropy-coded data after it) ends."""
    ends, at = [], 2
    while data[at + 1] != 0xD9:  # EOI
        marker = data[at + 1]
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # entropy-coded data: 0xFF only as 0xFF00 or a restart marker
            while not (data[at] == 0xFF and data[at + 1] not in (0x00, *range(0xD0, 0xD8))):
                at += 1
            ends.append(at)
    return ends


def repeated_scans(width: int, height: int, repeats: int, quality: int = 90) -> bytes:
    """A flat grey progressive JPEG whose last scan (and the tables before it) is repeated `repeats`
    times: each repeat is a few bytes and costs a decoding pass over every block (libjpeg warns of an
    "inconsistent progression sequence" and decodes on)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(
        buffer, "JPEG", progressive=True, quality=quality
    )
    data = buffer.getvalue()
    ends = _scan_ends(data)
    last = data[ends[-2] : ends[-1]]
    return data[: ends[-1]] + last * repeats + b"\xff\xd9"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) is rewritten to declare `width` x `height`."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _boxes(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """The ISO BMFF boxes between `start` and `end`: (type, start, end)."""
    boxes = []
    while start < end:
        size, kind = struct.unpack(">I4s", data[start : start + 8])
        boxes.append((kind, start, start + size))
        start += size
    return boxes


def cover_first(video: Path, path: Path) -> Path:
    """`video` (an MP4) with a 96x64 cover picture that ffmpeg reads as its first video stream: the cover is
    muxed as an attached picture, whose `udta` box is then moved ahead of the tracks in `moov` (its
    size unchanged, so every chunk offset still holds)."""
    cover = path.with_name("cover.jpg")
    ffmpeg("-f", "lavfi", "-i", "color=red:size=96x64", "-frames:v", "1", cover)
    muxed = path.with_name("with-cover.mp4")
    ffmpeg(
        "-i",
        cover,
        "-i",
        video,
        "-map",
        "0",
        "-map",
        "1",
        "-c",
        "copy",
        "-disposition:0",
        "attached_pic",
        muxed,
    )
    data = bytearray(muxed.read_bytes())
    _, start, end = next(box for box in _boxes(data, 0, len(data)) if box[0] == b"moov")
    children = _boxes(data, start + 8, end)
    order = sorted(children, key=lambda box: {b"mvhd": 0, b"udta": 1}.get(box[0], 2))
    data[start + 8 : end] = b"".join(data[s:e] for _, s, e in order)
    path.write_bytes(data)
    return path


def with_comments(data: bytes, count: int) -> bytes:
    """A JPEG with `count` empty comment (COM) segments after its SOI marker."""
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def multi_picture(data: bytes) -> bytes:
    """A JPEG (its first picture `data`) with a multi-picture index and a second picture, as phones and
    3D cameras write them: Pillow reads it as MPO."""
    first = Image.open(io.BytesIO(data))
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[first.copy()], progressive=True)
    return buffer.getvalue()
