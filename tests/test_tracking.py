"""Faces tracked through a video (`VideoTracker`, `--tracking`): misses filled from neighbours, the
tracked person kept, through the pipeline, the CLI and jobs. Expected faces are computed with NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orchestrator.faces.track import VideoTracker
from orchestrator.faces.types import Face
from orchestrator.media import FrameReader, probe
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.pipeline import swap_video
from orchestrator.swapper import FaceSwapper
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.clips import ffmpeg, moving_photo
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import create_job, invalid_fields, problem, upload, wait_job

BLURRED = range(5, 8)  # frames the detector cannot see a face in


def face_at(x: float, y: float = 50.0, size: float = 100.0, embedding=None) -> Face:
    box = np.array([x, y, x + size, y + size], np.float32)
    points = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32)
    return Face(box, 0.9, points * size + np.array([x, y], np.float32), embedding)


def run_tracker(tracker: VideoTracker, detections: list[list[Face]]) -> list[tuple[object, list]]:
    final = []
    for index, faces in enumerate(detections):
        final += tracker.push(faces, index)
    return final + tracker.flush()


def test_missed_frames_are_filled_with_interpolated_faces():
    moving = [face_at(10.0 * i) for i in range(10)]
    detections = [[] if i in (3, 4, 5) else [moving[i]] for i in range(10)]
    final = run_tracker(VideoTracker(gap=3), detections)
    assert [item for item, _ in final] == list(range(10))  # every frame once, in order
    for index, (_, pairs) in enumerate(final):
        assert len(pairs) == 1 and pairs[0][1] == 0
        face = pairs[0][0]
        # the face moves 10 px a frame, so interpolation between frames 2 and 6 lands on the truth
        np.testing.assert_allclose(face.box, moving[index].box, atol=1e-4)
        np.testing.assert_allclose(face.landmarks, moving[index].landmarks, atol=1e-4)


def test_a_fast_face_stays_one_track_and_is_filled_where_it_moves():
    """80 px a frame with a 100 px box: too little overlap, so matching must follow the motion."""
    moving = [face_at(80.0 * i) for i in range(8)]
    detections = [[] if i == 4 else [moving[i]] for i in range(8)]
    final = run_tracker(VideoTracker(gap=2), detections)
    assert [len(pairs) for _, pairs in final] == [1] * 8
    np.testing.assert_allclose(final[4][1][0][0].box, moving[4].box, atol=1e-3)


def test_a_filled_face_never_doubles_a_face_already_there():
    """Person a, then someone else (b) in the same place for a frame, then a again: a's track is found
    again, but frame 1 already has a face there, so nothing is filled in."""
    a, b = np.eye(4, dtype=np.float32)[:2]
    detections = [[face_at(0.0, embedding=a)], [face_at(0.0, embedding=b)], [face_at(0.0, embedding=a)]]
    final = run_tracker(VideoTracker(gap=2), detections)
    assert [len(pairs) for _, pairs in final] == [1, 1, 1]
    both = [[face_at(0.0)], [face_at(0.0), face_at(300.0)], [], [face_at(0.0), face_at(300.0)]]
    final = run_tracker(VideoTracker(gap=2), both)
    assert [len(pairs) for _, pairs in final] == [1, 2, 2, 2]


def test_a_miss_longer_than_the_gap_stays_a_miss():
    detections = [[] if i in (3, 4, 5) else [face_at(10.0 * i)] for i in range(10)]
    final = run_tracker(VideoTracker(gap=2), detections)
    assert [len(pairs) for _, pairs in final] == [1, 1, 1, 0, 0, 0, 1, 1, 1, 1]


def test_the_look_ahead_is_bounded():
    tracker = VideoTracker(gap=4)
    released = [len(tracker.push([face_at(5.0 * i)], i)) for i in range(12)]
    assert released == [0, 0, 0, 0] + [1] * 8  # at most 4 frames held
    assert len(tracker.flush()) == 4


def test_smoothing_calms_jitter():
    rng = np.random.default_rng(0)
    detections = []
    for _ in range(60):
        face = face_at(100.0)
        face.landmarks = face.landmarks + rng.normal(0, 2, face.landmarks.shape).astype(np.float32)
        detections.append([face])
    truth = face_at(100.0).landmarks

    def error(smoothing: float) -> float:
        tracked = run_tracker(
            VideoTracker(gap=2, smoothing=smoothing),
            [[Face(f.box, f.score, f.landmarks.copy()) for f in d] for d in detections],
        )
        return float(np.mean([np.abs(pairs[0][0].landmarks - truth).mean() for _, pairs in tracked[10:]]))

    assert error(0.7) < 0.6 * error(0.0)


def test_the_person_found_later_is_followed_back_and_forth():
    """The track's identity is recognised in frame 3 only; frames 0-2 (within the look-ahead) and
    4-7 (where the face's embedding drifts) still belong to that person; the other track to nobody."""
    me, other = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    vague = np.array([0.6, 0.0, 0.0, 0.8], np.float32)  # 0.4 from `me`, beyond the distance below
    detections = [
        [face_at(10.0 * i, embedding=me if i == 3 else vague), face_at(300.0, embedding=other)]
        for i in range(8)
    ]

    def assign(face: Face) -> int | None:
        return 0 if float(1 - face.embedding @ me) < 0.2 else None

    final = run_tracker(VideoTracker(gap=3, assign=assign), detections)
    for _, pairs in final:
        people = {int(face.box[0]): who for face, who in pairs}
        assert people[300] is None and list(people.values()).count(0) == 1


def test_different_people_do_not_share_a_track():
    a, b = np.eye(4, dtype=np.float32)[:2]
    detections = [[face_at(0.0, embedding=a)], [face_at(5.0, embedding=b)], [face_at(10.0, embedding=a)]]
    seen = []
    run_tracker(
        VideoTracker(gap=2, assign=lambda face: seen.append(face) or int(face.embedding[1])), detections
    )
    assert len(seen) == 2  # two tracks were started, each assigned once


# --- through the pipeline, with a clip the detector misses a face in


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The moving two-faces clip, and the same with frames blurred past the detector's reach."""
    folder = tmp_path_factory.mktemp("tracking")
    plain = moving_photo(folder / "plain.mp4", seconds=1.5, rate=10)
    blurred = folder / "blurred.mp4"
    first, last = BLURRED[0], BLURRED[-1]
    ffmpeg(
        "-i", plain, "-vf", f"gblur=sigma=30:enable='between(n,{first},{last})'",
        "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-c:a", "copy", blurred,
    )  # fmt: skip
    return {"plain": plain, "blurred": blurred}


def frames_of(path: Path) -> list[np.ndarray]:
    with FrameReader(probe(path)) as reader:
        return list(reader)


def face_changes(swapper: FaceSwapper, clips: dict[str, Path], output: Path) -> np.ndarray:
    """Per frame and face (where the plain clip shows them), the mean change from input to output."""
    plain, inputs, outputs = frames_of(clips["plain"]), frames_of(clips["blurred"]), frames_of(output)
    changes = []
    for found, frame, result in zip(swapper.find_faces(plain), inputs, outputs, strict=True):
        assert len(found) == 2
        per_face = []
        for face in found:
            x1, y1, x2, y2 = face.box.astype(int)
            per_face.append(np.abs(result[y1:y2, x1:x2].astype(int) - frame[y1:y2, x1:x2]).mean())
        changes.append(per_face)
    return np.array(changes)


def test_tracking_swaps_the_faces_the_detector_misses(triton_client, clips, tmp_path):
    swapper = FaceSwapper(triton_client)
    blurred = swapper.find_faces(frames_of(clips["blurred"]))
    assert [i for i, faces in enumerate(blurred) if not faces] == list(BLURRED)  # the misses are real

    untracked = tmp_path / "untracked.mp4"
    report = swap_video(
        swapper, [TWO_FACES], clips["blurred"], untracked, video=VideoOptions(preset="ultrafast")
    )
    changes = face_changes(swapper, clips, untracked)
    seen = [i for i in range(len(changes)) if i not in BLURRED]
    assert (changes[seen] > 10).all() and (changes[list(BLURRED)] < 4).all()  # without: the misses show
    assert report.swapped == report.faces == 2 * len(seen)

    tracked = tmp_path / "tracked.mp4"
    video = VideoOptions(preset="ultrafast", tracking=True, track_gap=3)
    report = swap_video(swapper, [TWO_FACES], clips["blurred"], tracked, video=video)
    assert (face_changes(swapper, clips, tracked) > 10).all()  # with: swapped in every frame
    assert report.faces == 2 * len(seen) and report.swapped == 2 * report.frames


def test_tracking_follows_the_reference_person(triton_client, clips, tmp_path):
    options = SwapOptions(selector="reference", face_order="left-right", reference_distance=0.3)
    swapper = FaceSwapper(triton_client, options)
    output = tmp_path / "left.mp4"
    video = VideoOptions(preset="ultrafast", tracking=True, reference_frame=0)
    report = swap_video(swapper, [TWO_FACES], clips["blurred"], output, video=video)
    changes = face_changes(swapper, clips, output)
    left = np.argmin([f.box[0] for f in swapper.find_faces(frames_of(clips["plain"])[:1])[0]])
    assert (changes[:, left] > 10).all() and (changes[:, 1 - left] < 4).all()
    assert report.swapped == report.frames


def test_tracking_through_the_cli(triton, clips, tmp_path):
    output = tmp_path / "cli.mp4"
    result = run_swap(
        triton.grpc_url, clips["blurred"], output, "--tracking", "--track-gap", "4",
        "--landmark-smoothing", "0.3", "--preset", "ultrafast",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames = probe(output).frame_count
    assert f"swapped {2 * frames} of {2 * (frames - len(BLURRED))} faces" in result.stdout


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--track-gap", "0", "track_gap"),
        ("--track-gap", "31", "track_gap"),
        ("--landmark-smoothing", "1.5", "landmark_smoothing"),
    ],
)
def test_bad_tracking_values_are_refused_in_one_line(triton, clips, tmp_path, flag, value, fragment):
    output = tmp_path / "out.mp4"
    result = run_swap(triton.grpc_url, clips["blurred"], output, "--tracking", flag, value)
    assert_one_line_error(result, fragment)
    assert not output.exists()


def test_tracking_through_jobs(start_service, clips):
    service = start_service()
    data = clips["blurred"].read_bytes()
    job = create_job(
        service.http,
        files=upload(target=("clip.mp4", data)),
        data={"tracking": "true", "track_gap": "3", "landmark_smoothing": "0.2", "preset": "ultrafast"},
    )
    done = wait_job(service.http, job["id"], timeout=300)
    frames = probe(clips["blurred"]).frame_count
    assert done["swapped"] == 2 * frames and done["faces"] == 2 * (frames - len(BLURRED))
    for field, value in (("track_gap", "0"), ("landmark_smoothing", "-1"), ("tracking", "maybe")):
        response = service.http.post("/v1/jobs", files=upload(target=("clip.mp4", data)), data={field: value})
        assert invalid_fields(problem(response, 422)) == {field}


def test_tracking_with_the_one_selector_swaps_one_face_a_frame(triton_client, clips, tmp_path):
    swapper = FaceSwapper(triton_client, SwapOptions(selector="one", face_order="left-right"))
    output = tmp_path / "one.mp4"
    video = VideoOptions(preset="ultrafast", tracking=True)
    report = swap_video(swapper, [TWO_FACES], clips["blurred"], output, video=video)
    changes = face_changes(swapper, clips, output)
    left = np.argmin([f.box[0] for f in swapper.find_faces(frames_of(clips["plain"])[:1])[0]])
    assert (changes[:, left] > 10).all() and (changes[:, 1 - left] < 4).all()  # the left one, every frame
    assert report.swapped == report.frames
