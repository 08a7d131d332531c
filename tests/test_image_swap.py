"""The image swap through a real Triton, checked against InsightFace run on the very same ONNX files."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import cv2
import insightface
import numpy as np
import pytest
from insightface.data import get_image
from PIL import Image

from orchestrator.faces.align import warp_face
from orchestrator.faces.blend import box_mask, paste_area
from orchestrator.options import SwapOptions
from orchestrator.pipeline import swap_image
from orchestrator.swapper import FaceSwapper
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.paths import TWO_FACES
from tests.helpers.reference import (
    InsightFaceReference,
    feathered_box,
    insightface_matrix,
    iou,
    paste_areas,
    paste_whole_frame,
)


@pytest.fixture(scope="module")
def reference(twin_files) -> InsightFaceReference:
    return InsightFaceReference(twin_files)


PHOTOS = {
    "two_faces": lambda: cv2.imread(str(TWO_FACES)),
    "t1": lambda: get_image("t1"),
    "t1_large": lambda: cv2.resize(get_image("t1"), None, fx=2.5, fy=2.5),  # about 7 MP
}


@pytest.mark.parametrize("photo", PHOTOS)
def test_detection_agrees_with_insightface(triton_client, reference, photo):
    frame = PHOTOS[photo]()
    ours = FaceSwapper(triton_client).find_faces([frame])[0]
    theirs = reference.faces(frame)
    assert len(ours) == len(theirs) > 0
    for face, expected in zip(ours, theirs, strict=True):  # both best score first
        assert iou(face.box, expected.bbox) >= 0.99
        assert np.abs(face.landmarks - expected.kps).max() <= 1.0


def test_embeddings_agree_with_insightface(triton_client, reference):
    frame = get_image("t1")
    swapper = FaceSwapper(triton_client)
    ours = swapper.find_faces([frame])[0]
    swapper.embed_faces([frame], [ours])
    theirs = reference.faces(frame)
    assert len(ours) == len(theirs) > 0
    for face, expected in zip(ours, theirs, strict=True):
        assert float(face.embedding @ expected.normed_embedding) >= 0.999


def test_swapped_crops_agree_with_insightface(triton_client, reference):
    frame = get_image("t1")
    source = reference.largest_face(cv2.imread(str(TWO_FACES)))
    swapper = FaceSwapper(triton_client)
    identity = swapper.identity([TWO_FACES])
    assert float(identity.embedding @ source.normed_embedding) >= 0.999
    faces = swapper.find_faces([frame])[0]
    crops = np.stack([warp_face(frame, face.landmarks, "arcface_128", 128)[0] for face in faces])
    ours = triton_client.swap(crops, identity.source)
    theirs = reference.faces(frame)
    assert len(ours) == len(theirs) > 0
    for crop, face in zip(ours, theirs, strict=True):
        expected, _ = reference.swapper.get(frame, face, source, paste_back=False)
        assert np.abs(crop.astype(float) - expected).mean() <= 1.0


@pytest.fixture(scope="module")
def t1_swapped(triton_client, reference, tmp_path_factory) -> dict[str, np.ndarray]:
    """InsightFace's group photo swapped with each paste-back mask, its paste areas (where
    InsightFace's crops land), InsightFace's own result, and its crops pasted with the box mask."""
    folder = tmp_path_factory.mktemp("t1_swapped")
    frame = get_image("t1")
    cv2.imwrite(str(folder / "t1.png"), frame)
    source = reference.largest_face(cv2.imread(str(TWO_FACES)))
    theirs = reference.faces(frame)
    assert len(theirs) == 6
    found = {"frame": frame, "insightface_reference": frame.copy(), "box_reference": frame.copy()}
    for face in theirs:
        found["insightface_reference"] = reference.swapper.get(
            found["insightface_reference"], face, source, paste_back=True
        )
        crop, matrix = reference.swapper.get(frame, face, source, paste_back=False)
        found["box_reference"] = paste_whole_frame(found["box_reference"], crop, feathered_box(128), matrix)
    found["inside"] = paste_areas([insightface_matrix(face.kps, 128) for face in theirs], 128, frame.shape)
    for mask in ("insightface", "box"):
        swapper = FaceSwapper(triton_client, SwapOptions(mask=mask))
        report = swap_image(swapper, [TWO_FACES], folder / "t1.png", folder / f"{mask}.png")
        assert report.faces == report.swapped == len(theirs)
        found[mask] = cv2.imread(str(folder / f"{mask}.png"))
    return found


def differences(ours: np.ndarray, expected: np.ndarray, inside: np.ndarray) -> tuple[int, float, int]:
    """The largest difference outside the paste areas, and the 99th percentile and largest inside."""
    difference = np.abs(ours.astype(int) - expected).max(axis=2)
    return difference[~inside].max(), np.percentile(difference[inside], 99), difference[inside].max()


def test_insightface_mode_output_agrees_with_insightface(t1_swapped):
    """The whole picture, with paste-back in InsightFace's mode, against its per-face loop, judged
    pixel by pixel inside the paste areas where a mean over the frame would hide the edges."""
    expected, inside = t1_swapped["insightface_reference"], t1_swapped["inside"]
    outside, typical, worst = differences(t1_swapped["insightface"], expected, inside)
    assert outside <= 1 and typical <= 3 and worst <= 6, (outside, typical, worst)
    # the box mask's output fails the same check: it feathers a different border
    assert differences(t1_swapped["box"], expected, inside)[1] > 20
    assert np.abs(t1_swapped["insightface"].astype(float) - t1_swapped["frame"]).mean() > 2.0


def test_box_mask_output_agrees_with_insightfaces_crops_pasted_by_the_test(t1_swapped):
    """The default paste-back against InsightFace's swapped crops pasted over the whole frame with
    FaceFusion's box mask, both written in the test."""
    expected, inside = t1_swapped["box_reference"], t1_swapped["inside"]
    outside, typical, worst = differences(t1_swapped["box"], expected, inside)
    assert outside == 0 and typical <= 2 and worst <= 4, (outside, typical, worst)
    assert differences(t1_swapped["insightface"], expected, inside)[1] > 20


def test_product_mask_changes_only_the_paste_areas_without_a_seam(triton_client, tmp_path):
    frame = get_image("t1")
    cv2.imwrite(str(tmp_path / "t1.png"), frame)
    swapper = FaceSwapper(triton_client)
    swap_image(swapper, [TWO_FACES], tmp_path / "t1.png", tmp_path / "out.png")
    result = cv2.imread(str(tmp_path / "out.png"))
    difference = np.abs(result.astype(int) - frame).max(axis=2)
    inside = np.zeros(frame.shape[:2], bool)
    edge_band = np.zeros(frame.shape[:2], np.float32)
    band = np.zeros((128, 128), np.float32)
    band[:2], band[-2:], band[:, :2], band[:, -2:] = 1, 1, 1, 1
    for face in swapper.find_faces([frame])[0]:
        _, matrix = warp_face(frame, face.landmarks, "arcface_128", 128)
        x1, y1, x2, y2 = paste_area(matrix, 128, frame.shape)
        inside[y1:y2, x1:x2] = True
        inverse = cv2.invertAffineTransform(matrix)
        edge_band = np.maximum(edge_band, cv2.warpAffine(band, inverse, frame.shape[1::-1]))
    assert difference[~inside].max() == 0  # byte for byte outside the paste areas
    assert difference[inside].max() > 40  # the faces did change
    assert difference[edge_band > 0.5].max() <= 2  # the crop's own edge blends in: no seam step


def test_150_faces_in_one_photo_are_swapped_in_batched_calls(triton_client, triton, tmp_path):
    frame = cv2.imread(str(TWO_FACES))
    left, right = (
        cv2.resize(frame[40:190, 115:235], (110, 120)),
        cv2.resize(frame[25:185, 240:365], (110, 120)),
    )
    grid = np.vstack([np.hstack([left if (r + c) % 2 else right for c in range(15)]) for r in range(10)])
    cv2.imwrite(str(tmp_path / "crowd.png"), grid)

    def swapper_counts():  # the CPU rendering runs face_swap as one fused model, batched as the swapper
        text = urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics").read().decode()
        found = dict(
            re.findall(r'^(nv_inference_(?:exec_)?count)\{model="face_swap",version="1"\} (\d+)', text, re.M)
        )
        return int(found["nv_inference_count"]), int(found["nv_inference_exec_count"])

    before = swapper_counts()
    report = swap_image(FaceSwapper(triton_client), [TWO_FACES], tmp_path / "crowd.png", tmp_path / "out.png")
    after = swapper_counts()
    assert report.faces == report.swapped == 150
    assert after[0] - before[0] == 150  # every face went through the swapper ...
    assert after[1] - before[1] <= 4  # ... in a few batches (max batch 64), not 150 calls
    assert np.abs(cv2.imread(str(tmp_path / "out.png")).astype(int) - grid).mean() > 1


# --- the command line, and bad input


def in_process(triton_client, output: Path, **options) -> np.ndarray:
    """The two-faces photo swapped onto itself by the pipeline in this process, as written to `output`."""
    swap_image(FaceSwapper(triton_client, SwapOptions(**options)), [TWO_FACES], TWO_FACES, output)
    return cv2.imread(str(output))


def jpeg_tables(path: Path) -> dict:
    return Image.open(path).quantization


def test_cli_swaps_the_two_faces_photo_as_the_pipeline_does(triton, triton_client, tmp_path):
    result = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.jpg")
    assert result.returncode == 0, result.stderr
    assert "swapped 2 of 2 faces" in result.stdout
    output = cv2.imread(str(tmp_path / "o.jpg"))
    assert np.array_equal(output, in_process(triton_client, tmp_path / "p.jpg"))
    assert np.abs(output.astype(int) - cv2.imread(str(TWO_FACES))).max() > 40
    enhanced = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "e.png", "--enhance", "--enhance-blend", "60")
    assert enhanced.returncode == 0, enhanced.stderr
    assert "swapped 2 of 2 faces" in enhanced.stdout
    expected = in_process(triton_client, tmp_path / "pe.png", enhance=True, enhance_blend=60)
    assert np.array_equal(cv2.imread(str(tmp_path / "e.png")), expected)
    assert np.abs(expected.astype(int) - in_process(triton_client, tmp_path / "pp.png")).max() > 10


def test_cli_jpeg_quality_sets_the_quantisation_tables(triton, tmp_path):
    """The JPEG's tables are the ones libjpeg's quality scaling gives (Pillow writing the same quality)."""
    for quality in (30, 95):
        output = tmp_path / f"q{quality}.jpg"
        result = run_swap(triton.grpc_url, TWO_FACES, output, "--jpeg-quality", str(quality))
        assert result.returncode == 0, result.stderr
        Image.open(TWO_FACES).save(tmp_path / "pillow.jpg", quality=quality)
        assert jpeg_tables(output) == jpeg_tables(tmp_path / "pillow.jpg")
    assert jpeg_tables(tmp_path / "q30.jpg") != jpeg_tables(tmp_path / "q95.jpg")
    assert (tmp_path / "q30.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size / 2
    refused = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "no.jpg", "--jpeg-quality", "0")
    assert_one_line_error(refused, "jpeg_quality", "greater than or equal to 1")
    assert not (tmp_path / "no.jpg").exists()


def blank(path, size=(200, 300)):
    cv2.imwrite(str(path), np.full((*size, 3), 128, np.uint8))
    return path


def test_source_without_a_face_is_an_error_naming_the_file(triton, tmp_path):
    result = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.png", source=blank(tmp_path / "wall.png"))
    assert_one_line_error(result, "wall.png", "no face")
    assert not (tmp_path / "o.png").exists()


def test_target_without_a_face_is_written_unchanged_with_a_warning(triton, tmp_path):
    target = blank(tmp_path / "wall.png")
    result = run_swap(triton.grpc_url, target, tmp_path / "o.png")
    assert result.returncode == 0
    assert "warning: wall.png: no face found; the target is written unchanged" in result.stderr
    assert np.array_equal(cv2.imread(str(tmp_path / "o.png")), cv2.imread(str(target)))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "the file is empty"),
        (b"%PDF-1.4 not an image", "not an image"),
        (None, "cannot decode"),
    ],
    ids=["zero-bytes", "not-an-image", "truncated"],
)
def test_unreadable_targets_are_errors_and_nothing_is_written(triton, tmp_path, content, fragment):
    target = tmp_path / "target.jpg"
    target.write_bytes(TWO_FACES.read_bytes()[:3000] if content is None else content)
    result = run_swap(triton.grpc_url, target, tmp_path / "o.jpg")
    assert_one_line_error(result, "target.jpg", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target.jpg"]


def test_missing_file_and_bad_output_format_are_errors(triton, tmp_path):
    missing = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.jpg", source=tmp_path / "nope.jpg")
    assert_one_line_error(missing, "nope.jpg")
    bad_format = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.xyz")
    assert_one_line_error(bad_format, "o.xyz", "unsupported output format")


def test_pixel_limit_is_enforced_from_the_environment(triton, tmp_path):
    env = {"FACESWAP_MAX_IMAGE_PIXELS": "100000", "PATH": "/usr/bin:/bin"}
    result = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.jpg", env=env)
    assert_one_line_error(result, "two_faces.jpg: 400x328 is 131,200 pixels, over the limit of 100,000")


def test_unreachable_triton_is_a_clear_error(tmp_path):
    env = {"FACESWAP_TRITON_RETRIES": "1", "PATH": "/usr/bin:/bin"}
    result = run_swap("127.0.0.1:1", TWO_FACES, tmp_path / "o.jpg", env=env)
    assert_one_line_error(result, "Triton at 127.0.0.1:1")
    assert not (tmp_path / "o.jpg").exists()


def test_grayscale_rgba_and_16_bit_targets_are_handled(triton, tmp_path):
    frame = cv2.imread(str(TWO_FACES))
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), frame.astype(np.uint16) * 257)
    rgba = tmp_path / "rgba.png"
    alpha = np.tile(np.linspace(0, 255, frame.shape[1]).astype(np.uint8), (frame.shape[0], 1))
    Image.fromarray(np.dstack([frame[:, :, ::-1], alpha]), "RGBA").save(rgba)
    for target in (gray, deep, rgba):
        result = run_swap(triton.grpc_url, target, tmp_path / f"out_{target.name}")
        assert result.returncode == 0, result.stderr
        assert "swapped 2 of 2 faces" in result.stdout
    kept = cv2.imread(str(tmp_path / "out_rgba.png"), cv2.IMREAD_UNCHANGED)
    assert kept.shape[2] == 4 and np.array_equal(kept[:, :, 3], alpha)


def test_exif_rotated_target_is_swapped_upright(triton, tmp_path):
    frame = cv2.imread(str(TWO_FACES))
    stored = np.ascontiguousarray(np.rot90(frame, 1))  # stored sideways, EXIF says: turn it back
    image = Image.fromarray(stored[:, :, ::-1])
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    result = run_swap(triton.grpc_url, tmp_path / "sideways.jpg", tmp_path / "out.png")
    assert result.returncode == 0, result.stderr
    assert "swapped 2 of 2 faces" in result.stdout
    assert cv2.imread(str(tmp_path / "out.png")).shape == frame.shape


def test_a_tightly_cropped_source_portrait_is_found(triton, tmp_path):
    """InsightFace's 112x112 aligned Tom Hanks crop: the face fills the frame, which SCRFD misses."""
    portrait = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    result = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.png", source=portrait)
    assert result.returncode == 0, result.stderr
    assert "swapped 2 of 2 faces" in result.stdout


def test_enhancer_raises_contrast_inside_the_faces_by_its_blend(triton_client):
    """The enhancer twin maps a pixel p to 127.5 + 1.25 (p - 127.5): check it lands, blended, on each face."""
    frame = get_image("t1")
    plain = FaceSwapper(triton_client)
    identity = plain.identity([TWO_FACES])
    faces = plain.find_faces([frame])[0]
    swapped = plain.swap_frames([frame], [faces], identity)[0]
    untouched = FaceSwapper(triton_client, SwapOptions(enhance=True, enhance_blend=0)).swap_frames(
        [frame], [faces], identity
    )[0]
    assert np.array_equal(untouched, swapped)  # blend 0: the enhancer changes nothing
    enhanced = FaceSwapper(triton_client, SwapOptions(enhance=True, enhance_blend=100)).swap_frames(
        [frame], [faces], identity
    )[0]
    inside = box_mask(512) > 0.99
    for face in faces:
        before, matrix = warp_face(swapped, face.landmarks, "ffhq_512", 512)
        after = cv2.warpAffine(enhanced, matrix, (512, 512), flags=cv2.INTER_LINEAR)
        expected = np.clip(127.5 + 1.25 * (before.astype(float) - 127.5), 0, 255)
        assert np.abs(after[inside] - expected[inside]).mean() < 3
        assert np.abs(after[inside].astype(float) - before[inside]).mean() > 5


def test_reference_selector_swaps_only_the_matching_face(triton, tmp_path):
    frame = cv2.imread(str(TWO_FACES))
    cv2.imwrite(str(tmp_path / "right_person.png"), frame[20:200, 230:380])  # the right-hand face, cropped
    options = ("--selector", "reference", "--reference", str(tmp_path / "right_person.png"))
    result = run_swap(triton.grpc_url, TWO_FACES, tmp_path / "o.png", *options, "--reference-distance", "0.3")
    assert result.returncode == 0, result.stderr
    assert "swapped 1 of 2 faces" in result.stdout
    changed = np.abs(cv2.imread(str(tmp_path / "o.png")).astype(int) - frame).mean(axis=2) > 10
    assert changed[:, 230:].sum() > 20 * changed[:, :230].sum()  # the right half changed, the left did not


def test_a_reference_matching_no_face_writes_the_target_unchanged_with_a_warning(triton, tmp_path):
    frame = cv2.imread(str(TWO_FACES))
    cv2.imwrite(str(tmp_path / "right_person.png"), frame[20:200, 230:380])
    cv2.imwrite(str(tmp_path / "left_half.png"), frame[:, :238])  # the left person only
    options = ("--selector", "reference", "--reference", str(tmp_path / "right_person.png"))
    output = tmp_path / "o.png"
    result = run_swap(
        triton.grpc_url, tmp_path / "left_half.png", output, *options, "--reference-distance", "0.3"
    )
    assert result.returncode == 0, result.stderr
    assert "swapped 0 of 1 faces" in result.stdout
    assert (
        "warning: left_half.png: no face matched the selection; the target is written unchanged"
        in result.stderr
    )
    assert np.array_equal(cv2.imread(str(output)), frame[:, :238])
