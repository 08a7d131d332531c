"""One source per person (`--map REFERENCE=SOURCE`, the API's `map`, `POST /v1/faces`): each person of
`two_faces.jpg` gets their own source's twin tint, an unmapped face is left alone. Expected images come
from single-source swaps of the same photo, computed here."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from orchestrator.casting import Person, face_id, id_embedding, parse_map
from orchestrator.errors import InputError
from orchestrator.images import read_image
from orchestrator.options import SwapOptions, VideoOptions
from orchestrator.pipeline import swap_image, swap_video
from orchestrator.swapper import FaceSwapper
from tests.helpers.cli import assert_one_line_error
from tests.helpers.clips import moving_photo
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.service import create_job, problem, upload, wait_job


def test_map_entries_group_by_reference():
    people = parse_map(["a.png=s1.png", "b.png=s2.png", "a.png=s3.png"], Path)
    assert people == [Person("a.png", (Path("s1.png"), Path("s3.png"))), Person("b.png", (Path("s2.png"),))]
    for bad in ("a.png", "=s.png", "a.png="):
        with pytest.raises(InputError, match="REFERENCE=SOURCE"):
            parse_map([bad], Path)
    with pytest.raises(InputError, match="face id"):
        parse_map(["/etc/passwd=s.png"], Path, paths=False)


def test_a_face_id_holds_its_embedding():
    rng = np.random.default_rng(1)
    embedding = rng.normal(size=512).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    back = id_embedding(face_id(embedding), 512)
    assert float(back @ embedding) > 0.9999
    for bad in ("face-", "face-!!!", face_id(embedding)[:-8], "nose-" + face_id(embedding)[5:]):
        with pytest.raises(InputError, match="not a face id"):
            id_embedding(bad, 512)
    with pytest.raises(InputError, match="not a face id"):
        id_embedding(face_id(embedding[:128]), 512)


@pytest.fixture(scope="module")
def people(tmp_path_factory, triton_client) -> dict:
    """Each person of the photo cut out (a source and a reference), with their face boxes in the photo."""
    folder = tmp_path_factory.mktemp("people")
    photo = cv2.imread(str(TWO_FACES))
    faces = sorted(FaceSwapper(triton_client).find_faces([photo])[0], key=lambda f: f.box[0])
    assert len(faces) == 2
    found = {}
    for name, face in zip(("left", "right"), faces, strict=True):
        x1, y1, x2, y2 = face.box.astype(int)
        margin = (x2 - x1) // 2
        cut = photo[max(y1 - margin, 0) : y2 + margin, max(x1 - margin, 0) : x2 + margin]
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), cut)
        inner = (x1 + 10, y1 + 10, x2 - 10, y2 - 10)
        found[name] = {"path": path, "box": inner}
    return found


def region(image: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return image[y1:y2, x1:x2].astype(int)


def swapped_with(swapper: FaceSwapper, tmp_path: Path, name: str, **kwargs) -> np.ndarray:
    output = tmp_path / f"{name}.png"
    swap_image(swapper, kwargs.pop("sources", []), TWO_FACES, output, **kwargs)
    return read_image(output).frame


def test_each_person_gets_their_own_source(triton_client, people, tmp_path):
    swapper = FaceSwapper(triton_client)
    left, right = people["left"], people["right"]
    photo = read_image(TWO_FACES).frame
    as_left = swapped_with(swapper, tmp_path, "all_left", sources=[left["path"]])
    as_right = swapped_with(swapper, tmp_path, "all_right", sources=[right["path"]])
    for person in (left, right):  # the two sources tint differently
        assert np.abs(region(as_left, person["box"]) - region(as_right, person["box"])).mean() > 10

    # crossed: the left person gets the right one's identity and the other way round
    crossed = [Person(str(left["path"]), (right["path"],)), Person(str(right["path"]), (left["path"],))]
    result = swapped_with(swapper, tmp_path, "crossed", face_map=crossed)
    assert np.abs(region(result, left["box"]) - region(as_right, left["box"])).mean() < 2
    assert np.abs(region(result, right["box"]) - region(as_left, right["box"])).mean() < 2

    # the twin recognizer tells these two apart at 0.3 (as tests/test_video_swap.py's reference test)
    strict = FaceSwapper(triton_client, SwapOptions(reference_distance=0.3))
    only_left = [Person(str(left["path"]), (right["path"],))]
    result = swapped_with(strict, tmp_path, "only_left", face_map=only_left)
    assert np.abs(region(result, left["box"]) - region(as_right, left["box"])).mean() < 2
    np.testing.assert_array_equal(region(result, right["box"]), region(photo, right["box"]))  # left alone


def run_mapped(triton_url: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m orchestrator swap` on the two-faces photo, without --source unless `extra` has it."""
    command = [
        sys.executable,
        "-m",
        "orchestrator",
        "swap",
        "--target",
        str(TWO_FACES),
        "--output",
        str(output),
    ]
    command += ["--triton-url", triton_url, *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_map_through_the_cli(triton, people, tmp_path):
    left, right = people["left"]["path"], people["right"]["path"]
    output = tmp_path / "out.png"
    result = run_mapped(triton.grpc_url, output, "--map", f"{left}={right}", "--map", f"{right}={left}")
    assert result.returncode == 0, result.stderr
    assert "swapped 2 of 2 faces" in result.stdout
    for extra, fragment in (
        (("--map", "nonsense"), "REFERENCE=SOURCE"),
        (("--map", f"{left}={tmp_path / 'missing.png'}"), "no such file"),
        (("--source", str(left), "--map", f"{left}={right}"), "either --source or --map"),
        ((), "either --source or --map"),
    ):
        bad = run_mapped(triton.grpc_url, tmp_path / "bad.png", *extra)
        assert_one_line_error(bad, fragment)
        assert not (tmp_path / "bad.png").exists()


def test_the_map_with_tracking_in_a_video(triton_client, people, tmp_path):
    clip = moving_photo(tmp_path / "clip.mp4", seconds=1.0, rate=8)
    left, right = people["left"]["path"], people["right"]["path"]
    output = tmp_path / "out.mp4"
    face_map = [Person(str(left), (right,))]
    video = VideoOptions(preset="ultrafast", tracking=True)
    swapper = FaceSwapper(triton_client, SwapOptions(reference_distance=0.3))
    report = swap_video(swapper, [], clip, output, video=video, face_map=face_map)
    assert report.faces == 2 * report.frames and report.swapped == report.frames  # the left person only


@pytest.fixture
def service(start_service):
    return start_service()


def test_faces_are_listed_with_ids_that_map(service, triton_client, people, tmp_path):
    response = service.http.post(
        "/v1/faces", files=upload(source=None, target=("two.jpg", TWO_FACES.read_bytes()))
    )
    assert response.status_code == 200, response.text
    listed = response.json()
    photo = read_image(TWO_FACES).frame
    assert (listed["width"], listed["height"]) == (photo.shape[1], photo.shape[0])
    expected = sorted(FaceSwapper(triton_client).find_faces([photo])[0], key=lambda f: f.box[0])
    assert len(listed["faces"]) == len(expected) == 2
    for face, truth in zip(listed["faces"], expected, strict=True):
        np.testing.assert_allclose(face["box"], truth.box, atol=0.01)
        np.testing.assert_allclose(face["landmarks"], truth.landmarks, atol=0.01)
        thumbnail = face["thumbnail"].removeprefix("data:image/jpeg;base64,")
        picture = cv2.imdecode(np.frombuffer(base64.b64decode(thumbnail), np.uint8), cv2.IMREAD_COLOR)
        assert picture is not None and max(picture.shape[:2]) <= 96

    # the ids as references: crossed, through the synchronous swap and a job, as the pipeline does it
    left_id, right_id = (face["id"] for face in listed["faces"])
    files = [
        ("source", ("a.png", people["left"]["path"].read_bytes(), "image/png")),
        ("source", ("b.png", people["right"]["path"].read_bytes(), "image/png")),
        ("target", ("two.png", cv2.imencode(".png", photo)[1].tobytes(), "image/png")),
    ]
    data = {"map": [f"{left_id}=b.png", f"{right_id}=a.png"]}
    response = service.http.post("/v1/swap", files=files, data=data)
    assert response.status_code == 200, response.text
    assert response.headers["x-faces-swapped"] == "2"
    crossed = [Person(str(people["left"]["path"]), (people["right"]["path"],)),
               Person(str(people["right"]["path"]), (people["left"]["path"],))]  # fmt: skip
    expected = swapped_with(FaceSwapper(triton_client), tmp_path, "crossed", face_map=crossed)
    result = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(result.astype(int) - expected).max() <= 2

    job = create_job(
        service.http, files=files, data={"map": [f"{left_id}=b.png"], "reference_distance": "0.3"}
    )
    done = wait_job(service.http, job["id"])
    assert (done["faces"], done["swapped"]) == (2, 1)

    for bad, fragment in (
        ([f"{left_id}=missing.png"], "no uploaded source is named"),
        (["face-AAAA=a.png"], "not a face id"),
        (["/etc/hosts=a.png"], "must be a face id"),
        (["nonsense"], "REFERENCE=SOURCE"),
    ):
        for route in ("/v1/swap", "/v1/jobs"):
            problem(service.http.post(route, files=files, data={"map": bad}), 422, "map", fragment)


def test_faces_of_a_video_frame_and_bad_requests(service, tmp_path):
    clip = moving_photo(tmp_path / "clip.mp4", seconds=1.0, rate=8)
    files = upload(source=None, target=("clip.mp4", clip.read_bytes()))
    listed = service.http.post("/v1/faces", files=files, data={"frame": "3"}).json()
    assert len(listed["faces"]) == 2 and listed["faces"][0]["box"][0] < listed["faces"][1]["box"][0]
    problem(service.http.post("/v1/faces", files=files, data={"frame": "500"}), 422, "there is no frame 500")
    problem(service.http.post("/v1/faces", files=files, data={"frame": "-1"}), 422, "frame")
    problem(
        service.http.post("/v1/faces", files=files, data={"detector_angles": "45"}), 422, "detector_angles"
    )
    text = upload(source=None, target=("notes.txt", b"not a picture"))
    problem(service.http.post("/v1/faces", files=text), 415, "target")
