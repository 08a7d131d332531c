"""Faces followed between detections (`faces.track`) and the live stream's pure parts: the one-frame
slot, the frame-rate bucket, frame decoding. Expected overlaps are computed here with NumPy."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from orchestrator.faces.track import FaceTracker, box_overlaps, match_faces
from orchestrator.faces.types import Face
from orchestrator.live import FrameError, FrameRate, FrameSlot, Received, decode_frame, encode_frame
from tests.helpers.paths import TWO_FACES


def face(x: float, y: float, size: float = 100.0, embedding: np.ndarray | None = None) -> Face:
    box = np.array([x, y, x + size, y + size], np.float32)
    eyes = np.array([[x + 0.3 * size, y + 0.4 * size], [x + 0.7 * size, y + 0.4 * size]], np.float32)
    rest = np.array(
        [
            [x + 0.5 * size, y + 0.6 * size],
            [x + 0.35 * size, y + 0.8 * size],
            [x + 0.65 * size, y + 0.8 * size],
        ],
        np.float32,
    )
    return Face(box, 0.9, np.concatenate([eyes, rest]), embedding)


def overlap_by_pixels(a: np.ndarray, b: np.ndarray) -> float:
    """IoU counted on a pixel grid: the independent reference for `box_overlaps`."""
    grid = np.zeros((2, 400, 400), bool)
    for layer, (x1, y1, x2, y2) in zip(grid, (a, b), strict=True):
        layer[int(y1) : int(y2), int(x1) : int(x2)] = True
    return (grid[0] & grid[1]).sum() / (grid[0] | grid[1]).sum()


@pytest.mark.parametrize("shift", [0, 10, 50, 99, 150])
def test_box_overlaps_match_a_pixel_count(shift):
    a, b = np.array([100, 100, 200, 200]), np.array([100 + shift, 120, 200 + shift, 220])
    assert box_overlaps(a, b)[0, 0] == pytest.approx(overlap_by_pixels(a, b), abs=1e-6)


def test_box_overlaps_shape_and_empty_boxes():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [3, 3, 3, 3]], np.float32)
    overlaps = box_overlaps(boxes, boxes)
    assert overlaps.shape == (3, 3)
    assert overlaps[0, 0] == 1 and overlaps[0, 1] == pytest.approx(25 / 175)
    assert overlaps[2, 2] == 0  # an empty box overlaps nothing, not even itself
    assert box_overlaps(np.zeros((0, 4)), boxes).shape == (0, 3)


def test_matching_pairs_each_face_with_its_nearest_and_uses_each_once():
    previous = [face(0, 0), face(200, 0)]
    current = [face(210, 5), face(300, 300), face(5, 5)]  # the two moved a little, a third appears
    assert sorted(match_faces(previous, current)) == [(0, 2), (1, 0)]
    # one detection overlapping two tracks goes to the better overlap only
    assert match_faces([face(0, 0), face(40, 0)], [face(35, 0)]) == [(1, 0)]
    assert match_faces([face(0, 0)], [face(90, 90)]) == []  # too little overlap: a different face


def test_tracker_keeps_ids_carries_faces_and_drops_a_face_missed_too_often():
    tracker = FaceTracker(max_missed=2)
    tracker.update([face(0, 0, embedding=np.ones(4, np.float32)), face(200, 0)])
    ids = [track.id for track in tracker.tracks]
    moved = tracker.update([face(8, 4), face(205, 2)])
    assert [track.id for track in tracker.tracks] == ids  # the same two faces
    assert np.array_equal(moved[0].box, face(8, 4).box)  # the new positions
    assert moved[0].embedding is not None  # a matched face keeps the identity it was embedded with
    assert tracker.faces == moved  # carried unchanged until the next detection

    tracker.update([face(210, 0)])  # the first face missed once, twice: still carried
    tracker.update([face(212, 0)])
    assert [track.id for track in tracker.tracks] == ids
    assert np.array_equal(tracker.faces[0].box, face(8, 4).box)
    tracker.update([face(214, 0), face(400, 400)])  # missed a third time: dropped; a new face starts
    assert tracker.tracks[0].id == ids[1]
    assert len(tracker.tracks) == 2 and tracker.tracks[1].id not in ids

    tracker.reset()
    assert tracker.faces == []


def test_the_frame_slot_keeps_the_newest_frame_and_counts_the_dropped():
    async def scenario():
        slot = FrameSlot()
        for number in range(5):
            slot.put(Received(number, 0.0, b"x"))
        first = await slot.take()
        slot.put(Received(5, 0.0, b"y"))
        second = await slot.take()
        waiting = asyncio.ensure_future(slot.take())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing waits: take() waits for the next frame
        slot.put(Received(6, 0.0, b"z"))
        return first.number, second.number, (await waiting).number, slot.dropped

    assert asyncio.run(scenario()) == (4, 5, 6, 4)


def test_the_frame_rate_bucket_allows_a_second_of_burst_then_the_rate():
    rate = FrameRate(10, now=0.0)
    assert sum(rate.allow(now=0.0) for _ in range(20)) == 10
    assert rate.allow(now=0.05) is False  # half a frame's worth of time
    assert rate.allow(now=0.1) is True
    allowed = sum(rate.allow(now=1.0 + i / 20) for i in range(100))  # 20 frames/s for 4.95 s
    assert allowed == pytest.approx(9 + 10 * 4.95, abs=1)  # the 9 saved up since 0.1 s, then 10 a second


def test_decode_frame_reads_jpeg_and_webp_and_refuses_the_rest():
    photo = cv2.imread(str(TWO_FACES))
    for kind in ("jpg", "webp"):
        frame, found = decode_frame(encode_frame(photo, kind, 90), max_pixels=10**7)
        assert found == kind and frame.shape == photo.shape
        assert np.abs(frame.astype(int) - photo).mean() < 4
    png = cv2.imencode(".png", photo)[1].tobytes()
    for data, message in [
        (png, "not a JPEG or WebP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "not a JPEG or WebP"),
        (b"\xff\xd8\xff" + b"\x00" * 64, "cannot"),
        (encode_frame(photo, "jpg", 90), "over the limit"),
    ]:
        with pytest.raises(FrameError, match=message):
            decode_frame(data, max_pixels=10**7 if message != "over the limit" else 1000)
