"""Rotated faces (`--detector-angles`): turned passes mapped back and merged with the upright one,
through the pipeline, the CLI and the API. Expected boxes come from the upright photo, turned with NumPy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from orchestrator.faces.rotate import merge_faces, parse_angles, turn, turn_back
from orchestrator.faces.types import Face
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.paths import TWO_FACES
from tests.helpers.reference import iou
from tests.helpers.service import invalid_fields, problem, upload

ALL = "0,90,180,270"


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_turned_points_come_back_where_they_were(angle):
    """A single lit pixel, turned by NumPy; its centre turned back lands on the original centre."""
    frame = np.zeros((30, 50, 3), np.uint8)
    frame[7, 41] = 255
    turned = np.rot90(frame, k=-angle // 90)
    np.testing.assert_array_equal(turn(frame, angle), turned)
    y, x = np.argwhere(turned[:, :, 0])[0]
    back = turn_back(np.array([x + 0.5, y + 0.5], np.float32), angle, frame.shape)
    np.testing.assert_allclose(back, [41.5, 7.5])


def test_duplicates_merge_to_the_first_given():
    def face(x, score):
        return Face(np.array([x, 0, x + 100, 100], np.float32), score, np.zeros((5, 2), np.float32))

    merged = merge_faces([face(0, 0.6), face(5, 0.9), face(300, 0.7)])
    assert [(float(f.box[0]), f.score) for f in merged] == [(300.0, 0.7), (0.0, 0.6)]


@pytest.mark.parametrize("text", ["45", "0,91", "", "up", "0,,90"])
def test_angles_outside_the_four_are_refused(text):
    with pytest.raises(ValueError, match="0, 90, 180, 270"):
        parse_angles(text)


def turned_boxes(boxes: list[np.ndarray], shape, angle: int) -> list[np.ndarray]:
    """Upright boxes in the pixels of the frame turned `angle` degrees clockwise (NumPy reference)."""
    height, width = shape[:2]
    turned = []
    for x1, y1, x2, y2 in boxes:
        corners = np.array([[x1, y1], [x2, y2]])
        if angle == 90:
            corners = np.stack([height - corners[:, 1], corners[:, 0]], axis=1)
        elif angle == 270:
            corners = np.stack([corners[:, 1], width - corners[:, 0]], axis=1)
        else:
            corners = np.array([width, height]) - corners
        turned.append(np.concatenate([corners.min(axis=0), corners.max(axis=0)]))
    return turned


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_a_turned_photo_gives_the_upright_faces(triton_client, angle):
    photo = cv2.imread(str(TWO_FACES))
    upright = FaceSwapper(triton_client).find_faces([photo])[0]
    assert len(upright) == 2
    expected = turned_boxes([f.box for f in upright], photo.shape, angle)
    turned = np.ascontiguousarray(np.rot90(photo, k=-angle // 90))

    def same_faces(faces) -> int:
        return sum(any(iou(box, face.box) >= 0.95 for face in faces) for box in expected)

    plain = FaceSwapper(triton_client).find_faces([turned])[0]
    found = FaceSwapper(triton_client, SwapOptions(detector_angles=ALL)).find_faces([turned])[0]
    assert len(found) == same_faces(found) == len(expected) > same_faces(plain)


@pytest.fixture(scope="module")
def turned_photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("angles") / "turned.png"
    cv2.imwrite(str(path), np.rot90(cv2.imread(str(TWO_FACES)), k=-1))
    return path


def test_angles_through_the_cli(triton, turned_photo, tmp_path):
    output = tmp_path / "out.png"
    result = run_swap(triton.grpc_url, turned_photo, output, "--detector-angles", "0,270")
    assert result.returncode == 0, result.stderr
    assert "swapped 2 of 2 faces" in result.stdout
    bad = run_swap(triton.grpc_url, turned_photo, tmp_path / "bad.png", "--detector-angles", "45")
    assert_one_line_error(bad, "detector_angles", "0, 90, 180, 270")
    assert not (tmp_path / "bad.png").exists()


def test_angles_through_the_api_and_jobs(start_service, turned_photo):
    service = start_service()
    files = upload(target=("turned.png", turned_photo.read_bytes()))
    response = service.http.post("/v1/swap", files=files, data={"detector_angles": ALL})
    assert response.status_code == 200, response.text
    assert response.headers["x-faces-swapped"] == "2"
    for route in ("/v1/swap", "/v1/jobs"):
        refused = service.http.post(route, files=files, data={"detector_angles": "0,45"})
        assert invalid_fields(problem(refused, 422, "0, 90, 180, 270")) == {"detector_angles"}
