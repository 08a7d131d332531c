"""Masks beyond the box: occlusion, region, area and mouth masks through a real Triton and the twins.

The twins' documented rules (modelplane/mask_twins.py) predict each mask: the occluder covers
strongly green pixels, the parser labels a fixed layout of the aligned crop, the landmarker draws a
fixed face in the box crop. Every expectation is computed here from those rules and the alignment.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from modelplane.errors import PreparationError
from modelplane.local_server import running_server
from modelplane.mask_twins import GREEN_MARGIN, PARSER_LAYOUT, landmark_layout, parser_classes
from modelplane.prepare import prepare_repository
from modelplane.roles import OPTIONAL_ROLES as MASK_ROLES
from modelplane.roles.masks import ENSEMBLES
from orchestrator.errors import InputError
from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.masks import MOUTH, REGIONS, area_mask, combine, mouth_mask
from orchestrator.images import read_image
from orchestrator.masking import FaceMasker, landmark_matrix
from orchestrator.options import SwapOptions, parse_options
from orchestrator.pipeline import swap_image
from orchestrator.swapper import FaceSwapper
from tests.helpers.cli import run_swap
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import create_job, problem, upload, wait_job

MARGIN = 6  # frame pixels around a mask's edge where blur and interpolation may act
NOSE = next(rect for label, rect in PARSER_LAYOUT if label == REGIONS["nose"])
GREEN = (0, 255, 0)  # BGR


@pytest.fixture(scope="module")
def scene(triton_client):
    """The two-faces photo, its faces, and the source identity (the same photo's largest face)."""
    swapper = FaceSwapper(triton_client)
    frame = swapper.read(TWO_FACES).frame
    (faces,) = swapper.find_faces([frame])
    assert len(faces) == 2
    return frame, faces, swapper.identity([TWO_FACES])


def _swap(triton_client, scene, frame=None, **options) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) of swapping the first face of the scene (or of `frame`) with `options`."""
    original, faces, identity = scene
    frame = original if frame is None else frame
    swapper = FaceSwapper(triton_client, SwapOptions(**options))
    (result,) = swapper.swap_frames([frame], [[faces[0]]], identity)
    return frame, result


def _swap_matrix(frame, face) -> np.ndarray:
    return warp_face(frame, face.landmarks, template_for(128), 128)[1]


def _polygon(points: np.ndarray, shape, grow: int = 0) -> np.ndarray:
    """A boolean frame mask of the convex hull of `points`, grown (or shrunk, if negative) in pixels."""
    area = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(area, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    kernel = np.ones((2 * abs(grow) + 1,) * 2, np.uint8)
    if grow > 0:
        area = cv2.dilate(area, kernel)
    elif grow < 0:
        area = cv2.erode(area, kernel)
    return area.astype(bool)


def _crop_rect_in_frame(rect, matrix, shape, grow: int = 0) -> np.ndarray:
    """A rectangle given in fractions of the 128 crop, as a frame mask."""
    x1, y1, x2, y2 = (v * 128 for v in rect)
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)
    inverse = cv2.invertAffineTransform(matrix)
    return _polygon(corners @ inverse[:, :2].T + inverse[:, 2], shape, grow)


def _box(face, shape, grow: int = 0) -> np.ndarray:
    x1, y1, x2, y2 = face.box
    return _polygon(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), shape, grow)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(before.astype(int) - after.astype(int)).max(axis=2)


def _mouth_in_frame(face, shape, grow: int) -> np.ndarray:
    """The landmarker twin's outer lips, mapped from its box crop into the frame."""
    inverse = cv2.invertAffineTransform(landmark_matrix(face.box, 256))
    lips = landmark_layout(256)[list(MOUTH)]
    return _polygon(lips @ inverse[:, :2].T + inverse[:, 2], shape, grow)


# --- the ensembles


def test_face_occlusion_marks_strongly_green_pixels(triton_client):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    crops[0, 40:120, 60:200] = GREEN
    mask = triton_client.infer("face_occlusion", {"crop": crops})["mask"]
    unit = crops.astype(np.float64) / 255
    greenness = unit[..., 1] - np.maximum(unit[..., 0], unit[..., 2])
    decided = np.abs(greenness - GREEN_MARGIN) > 1e-4
    expected = np.where(greenness > GREEN_MARGIN, 0, 255)
    assert mask.dtype == np.uint8 and mask.shape == (2, 256, 256)
    assert np.array_equal(mask[decided], expected[decided])
    assert (mask[0, 40:120, 60:200] == 0).all() and mask[1].mean() > 200


def test_face_parse_returns_the_class_map_of_the_layout(triton_client):
    crops = np.random.default_rng(1).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    classes = triton_client.infer("face_parse", {"crop": crops})["classes"]
    assert classes.dtype == np.uint8
    assert np.array_equal(classes, np.stack([parser_classes(512)] * 2))


def test_face_landmark_returns_68_points_in_crop_pixels(triton_client):
    crops = np.zeros((3, 256, 256, 3), np.uint8)
    found = triton_client.infer("face_landmark", {"crop": crops})
    assert found["landmarks"].shape == (3, 68, 2) and found["scores"].shape == (3, 68)
    np.testing.assert_allclose(found["landmarks"], np.stack([landmark_layout(256)] * 3), atol=1e-3)
    np.testing.assert_allclose(found["scores"], 1.0)


# --- masks in the paste-back


@pytest.mark.parametrize("enhance", [False, True])
def test_an_occluder_over_the_face_is_kept_and_the_rest_is_swapped(triton_client, scene, enhance):
    original, faces, _ = scene
    face = faces[0]
    x1, y1, x2, y2 = face.box.astype(int)
    painted = original.copy()
    patch = np.zeros(original.shape[:2], bool)
    patch[(y1 + y2) // 2 : y2, x1 : (x1 + x2) // 2] = True  # a green hand over the lower left quarter
    painted[patch] = GREEN
    inside = cv2.erode(patch.astype(np.uint8), np.ones((2 * MARGIN + 1,) * 2, np.uint8)).astype(bool)
    rest = _box(face, original.shape, -MARGIN) & ~cv2.dilate(
        patch.astype(np.uint8), np.ones((4 * MARGIN + 1,) * 2, np.uint8)
    ).astype(bool)

    _, occluded = _swap(triton_client, scene, painted, mask="box,occlusion", enhance=enhance)
    assert _changed(painted, occluded)[inside].max() <= 1
    assert _changed(painted, occluded)[rest].mean() > 10

    _, boxed = _swap(triton_client, scene, painted, enhance=enhance)  # the check fails without the mask
    assert _changed(painted, boxed)[inside].mean() > 10


def test_region_selection_changes_only_the_chosen_regions(triton_client, scene):
    frame, result = _swap(triton_client, scene, mask="box,region", regions="nose")
    matrix = _swap_matrix(frame, scene[1][0])
    changed = _changed(frame, result)
    assert changed[~_crop_rect_in_frame(NOSE, matrix, frame.shape, MARGIN)].max() == 0
    assert changed[_crop_rect_in_frame(NOSE, matrix, frame.shape, -MARGIN)].mean() > 10

    frame, result = _swap(triton_client, scene, mask="box,region", regions="skin,nose")
    assert (
        _changed(frame, result)[
            ~_crop_rect_in_frame((0.15, 0.15, 0.85, 0.95), matrix, frame.shape, MARGIN)
        ].max()
        == 0
    )


def test_the_area_mask_swaps_only_the_mouth_area(triton_client, scene):
    frame, result = _swap(triton_client, scene, mask="box,area", areas="mouth")
    face = scene[1][0]
    changed = _changed(frame, result)
    assert changed[~_mouth_in_frame(face, frame.shape, MARGIN)].max() == 0
    assert changed[_mouth_in_frame(face, frame.shape, -MARGIN // 2)].mean() > 10


@pytest.mark.parametrize("enhance", [False, True])
def test_the_mouth_mask_leaves_the_mouth_byte_identical(triton_client, scene, enhance):
    face = scene[1][0]
    frame, result = _swap(triton_client, scene, mouth_mask=True, enhance=enhance)
    mouth = _mouth_in_frame(face, frame.shape, -1)
    assert mouth.sum() > 50
    assert np.array_equal(frame[mouth], result[mouth])
    assert (
        _changed(frame, result)[
            _box(face, frame.shape, -MARGIN) & ~_mouth_in_frame(face, frame.shape, 30)
        ].mean()
        > 10
    )

    frame, result = _swap(triton_client, scene, enhance=enhance)  # without it the mouth is swapped
    assert _changed(frame, result)[mouth].mean() > 10


def test_the_combined_mask_is_never_larger_than_any_of_its_parts(triton_client, scene):
    original, faces, _ = scene
    painted = original.copy()
    x1, y1, x2, y2 = faces[0].box.astype(int)
    painted[y1 : (y1 + y2) // 2, x1:x2] = GREEN
    crop, matrix = warp_face(painted, faces[0].landmarks, template_for(128), 128)
    args = ([painted], [faces[0]], crop[None], [matrix])
    everything = dict(
        mask="box,occlusion,region,area", regions="nose,skin", mouth_mask=True, mask_padding="5,0,10,0"
    )
    (combined,) = FaceMasker(triton_client, SwapOptions(**everything)).masks(*args)
    parts = [
        FaceMasker(
            triton_client, SwapOptions(mask=kind, **{k: v for k, v in everything.items() if k != "mask"})
        ).masks(*args)[0]
        for kind in ("box", "occlusion", "region", "area")
    ]
    assert all((combined <= part + 1e-7).all() for part in parts)
    assert 0 < combined.max() <= 1 and combined.min() == 0
    for part in parts[1:]:  # each model mask takes something away from the box
        assert (part < parts[0] - 0.5).any()


def test_mask_functions_hold_their_contracts():
    points = landmark_layout(128)  # any plausible face in a 128 crop
    kept = mouth_mask(points, 128, grow=0.1, feather=0.3)
    lips = _polygon(points[list(MOUTH)], (128, 128), -1)
    assert (kept[lips] == 0).all() and kept.max() == 1
    mouth = area_mask(points, ("mouth",), 128)
    centre = np.round(points[list(MOUTH)].mean(axis=0)).astype(int)
    outside = ~_polygon(points[list(MOUTH)], (128, 128), 1)
    assert mouth[centre[1], centre[0]] > 0.9 and mouth[outside].max() == 0
    rng = np.random.default_rng(2)
    masks = [rng.uniform(0, 1, (16, 16)).astype(np.float32) for _ in range(3)]
    assert np.array_equal(combine(masks), np.minimum(np.minimum(masks[0], masks[1]), masks[2]))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mask": "box,hands"}, "mask: unknown mask 'hands'; choose from box, occlusion, region, area"),
        ({"mask": "insightface,occlusion"}, "the insightface mask does not combine with others"),
        ({"regions": "skin,ears"}, "regions: unknown region 'ears'; choose from skin"),
        ({"areas": "forehead"}, "areas: unknown area 'forehead'"),
        ({"mask_padding": "10,10"}, "mask_padding: give four percentages 0..100"),
        ({"mask_padding": "0,0,0,101"}, "mask_padding: give four percentages 0..100"),
        ({"mouth_mask_size": 101}, "mouth_mask_size: Input should be less than or equal to 100"),
        ({"mask": "insightface", "mouth_mask": True}, "the mouth mask does not combine with the insightface"),
    ],
)
def test_bad_mask_values_are_refused_with_one_line(values, message):
    with pytest.raises(InputError) as refused:
        parse_options(SwapOptions, values)
    assert message in str(refused.value) and "\n" not in str(refused.value)


# --- the options through the CLI, the API and jobs; a missing model


@pytest.fixture(scope="module")
def plain_triton(repository, tmp_path_factory):
    """The test repository without the optional mask models, served by a second Triton."""
    root = tmp_path_factory.mktemp("without_masks")
    optional = set(MASK_ROLES) | {f"{r}_{step}" for r in MASK_ROLES for step in ("preprocess", "postprocess")}
    optional |= set(ENSEMBLES.values())
    for model in repository.iterdir():
        if model.is_dir() and model.name not in optional and not model.name.startswith("."):
            (root / model.name).symlink_to(model)
    with running_server(root, tmp_path_factory.mktemp("plain_triton")) as server:
        yield server


def test_the_cli_takes_every_mask_option_and_refuses_bad_ones(triton, triton_client, tmp_path):
    output = tmp_path / "masked.png"
    options = ("--mask", "box,occlusion,region,area", "--regions", "skin,nose", "--areas", "upper-face,mouth")
    options += (
        "--mask-padding",
        "0,0,10,0",
        "--mouth-mask",
        "--mouth-mask-size",
        "20",
        "--mouth-mask-feather",
        "10",
    )
    result = run_swap(triton.grpc_url, TWO_FACES, output, *options)
    assert result.returncode == 0, result.stderr
    # the same options in this process give the same picture, and one the masks did change
    masks = SwapOptions(
        mask="box,occlusion,region,area",
        regions="skin,nose",
        areas="upper-face,mouth",
        mask_padding="0,0,10,0",
        mouth_mask=True,
        mouth_mask_size=20,
        mouth_mask_feather=10,
    )
    expected = {}
    for name, options in (("masked", masks), ("plain", SwapOptions())):
        swap_image(FaceSwapper(triton_client, options), [TWO_FACES], TWO_FACES, tmp_path / f"{name}-here.png")
        expected[name] = read_image(tmp_path / f"{name}-here.png").frame
    assert np.array_equal(read_image(output).frame, expected["masked"])
    assert np.abs(expected["masked"].astype(int) - expected["plain"]).max() > 40

    refused = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "no.png", "--regions", "skin,ears")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: regions: unknown region 'ears'")
    assert not (tmp_path / "no.png").exists()


def test_a_mask_whose_model_is_not_served_is_refused_with_one_line(plain_triton, service_clips, tmp_path):
    output = tmp_path / "no.png"
    result = run_swap(plain_triton.grpc_url, TWO_FACES, output, "--mask", "box,occlusion")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: the occlusion mask needs the occluder model (face_occlusion)")
    assert not output.exists()
    result = run_swap(plain_triton.grpc_url, TWO_FACES, output, "--mouth-mask")
    assert "the mouth mask needs the landmarker model (face_landmark)" in result.stderr
    clip = tmp_path / "clip.mp4"
    result = run_swap(plain_triton.grpc_url, service_clips["short"], clip, "--mask", "region")
    assert result.returncode == 1 and result.stderr.startswith(
        "error: the region mask needs the parser model"
    )
    assert not list(tmp_path.iterdir())  # nothing half-written
    assert run_swap(plain_triton.grpc_url, TWO_FACES, output).returncode == 0  # the box mask needs none


def _changed_pixels(response) -> int:
    assert response.status_code == 200, response.text
    result = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    return int((_changed(read_image(TWO_FACES).frame, result) > 0).sum())


def test_the_api_and_jobs_take_the_mask_options(start_service, plain_triton, service_clips):
    service = start_service()
    png = {"output_format": "png"}
    boxed = _changed_pixels(service.http.post("/v1/swap", files=upload(), data=png))
    noses = _changed_pixels(
        service.http.post("/v1/swap", files=upload(), data=png | {"mask": "box,region", "regions": "nose"})
    )
    assert 0 < noses < boxed / 5
    problem(service.http.post("/v1/swap", files=upload(), data={"mask_padding": "1,2"}), 422, "mask_padding")
    problem(
        service.http.post("/v1/swap", files=upload(), data={"mask": "box,hat"}), 422, "unknown mask 'hat'"
    )

    fields = {
        "mask": "box,occlusion,region",
        "regions": "skin",
        "mouth_mask": "true",
        "mask_padding": "5,5,5,5",
    }
    job = create_job(service.http, data=fields)
    assert wait_job(service.http, job["id"])["state"] == "succeeded"
    clip = ("clip.mp4", service_clips["short"].read_bytes())
    job = create_job(
        service.http,
        files=upload(target=clip),
        data=fields | {"mask": "box,occlusion,area", "areas": "mouth", "preset": "ultrafast"},
    )
    assert wait_job(service.http, job["id"])["state"] == "succeeded"

    plain = start_service(triton_url=plain_triton.grpc_url)
    problem(plain.http.post("/v1/swap", files=upload(), data={"mask": "box,region"}), 422, "parser model")
    refused = plain.http.post("/v1/jobs", files=upload(), data={"mask": "box,area"})  # before it is queued
    problem(refused, 422, "the area mask needs the landmarker model (face_landmark)")


# --- the mask roles' contracts


@pytest.mark.parametrize(
    ("role", "wrong", "message"),
    [
        ("occluder", "parser", "occluder: tensor 'input': expected an NHWC image tensor [batch,S,S,3]"),
        ("parser", "landmarker", "parser: tensor 'points': expected class logits [batch,C>=14,256,256]"),
        ("landmarker", "parser", "landmarker: expected points [batch,68,3] and heatmaps"),
    ],
)
def test_a_file_that_does_not_fit_its_mask_role_is_refused(mask_twin_files, tmp_path, role, wrong, message):
    with pytest.raises(PreparationError) as refused:
        prepare_repository({role: mask_twin_files[wrong]}, tmp_path / "repository")
    assert message in str(refused.value) and str(mask_twin_files[wrong]) in str(refused.value)


def test_each_mask_role_is_optional(mask_twin_files, tmp_path):
    names = prepare_repository({"occluder": mask_twin_files["occluder"]}, tmp_path / "repository")
    assert "face_occlusion" in names and not {"face_parse", "face_landmark", "parser"} & set(names)
