"""What decoding untrusted image bytes may cost, checked from the bytes before any pixel is decoded.

The pixel limit bounds a decode's memory and, for PNG, WebP and baseline JPEG, its time. A progressive
JPEG costs a pass over all its coefficients per scan, and its scans may repeat: a 200 KB file of
thousands of scans took half a minute of CPU. Real encoders write at most a few dozen scans (libjpeg's
progression has 10 for colour, 6 for grayscale), so more than MAX_JPEG_SCANS is refused unread, as
is a JPEG of more than MAX_JPEG_SEGMENTS markers (each one a step of the parsers, this one included).
"""

from __future__ import annotations

import re

from orchestrator.errors import OverLimit

MAX_JPEG_SCANS = 40
MAX_JPEG_SEGMENTS = 1000  # markers of any kind: real files have tens (an ICC profile in 64 KB parts)
_SOS = 0xDA
_EOI = 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and the restart markers carry no length
# A marker: 0xFF then anything but a stuffed zero, a restart, or a fill byte (entropy-coded data
# holds 0xFF only in those forms).
_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")


def jpeg_segments(
    data: bytes | memoryview, max_segments: int | None = None, max_scans: int | None = None
) -> tuple[int, int]:
    """The number of segments (markers) and of scans (SOS segments) of a JPEG's first image, counted
    no further than one past `max_segments` segments or `max_scans` scans.

    Segments are skipped by their declared length, so markers inside APP data (an EXIF thumbnail)
    are not counted; entropy-coded data is searched for the next marker.
    """
    segments, scans, at = 0, 0, 2
    while (found := _MARKER.search(data, at)) is not None:
        segments += 1
        if max_segments is not None and segments > max_segments:
            break
        marker, at = data[found.start() + 1], found.end()
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        if at + 2 > len(data):
            break
        at += int.from_bytes(data[at : at + 2], "big")
        if marker == _SOS:
            scans += 1
            if max_scans is not None and scans > max_scans:
                break
    return segments, scans


def jpeg_scans(data: bytes | memoryview, stop_after: int | None = None) -> int:
    """The number of scans of a JPEG's first image, counting at most `stop_after` + 1."""
    return jpeg_segments(data, max_scans=stop_after)[1]


def check_decode_cost(name: str, data: bytes | memoryview) -> None:
    """OverLimit when decoding `data` (an image named `name`) would cost far more than its pixels."""
    if bytes(data[:3]) != b"\xff\xd8\xff":
        return
    segments, scans = jpeg_segments(data, MAX_JPEG_SEGMENTS, MAX_JPEG_SCANS)
    if segments > MAX_JPEG_SEGMENTS:
        raise OverLimit(f"{name}: a JPEG of more than {MAX_JPEG_SEGMENTS} segments, over the limit")
    if scans > MAX_JPEG_SCANS:
        raise OverLimit(
            f"{name}: a JPEG of more than {MAX_JPEG_SCANS} scans, over the limit of {MAX_JPEG_SCANS} "
            "(no encoder writes so many; each one costs a decoding pass)"
        )
