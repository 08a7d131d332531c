"""Face geometry on arrays, no server: alignment, letterbox, masks, paste-back, selection, images."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from insightface.utils.face_align import estimate_norm
from PIL import Image

from orchestrator.errors import OverLimit
from orchestrator.faces import align, blend, detect, select
from orchestrator.faces.identity import average_identity, face_distance
from orchestrator.faces.types import Face
from orchestrator.images import ImageError, Picture, encode_image, read_image
from tests.helpers.paths import TWO_FACES

LANDMARKS = np.array([[140, 160], [190, 158], [166, 190], [146, 220], [186, 219]], np.float32)


@pytest.mark.parametrize("size", [112, 128, 224, 256])
def test_alignment_matches_insightface(size):
    rng = np.random.default_rng(size)
    for _ in range(20):
        landmarks = LANDMARKS * rng.uniform(0.5, 3) + rng.uniform(0, 300, 2) + rng.normal(0, 2, (5, 2))
        landmarks = landmarks.astype(np.float32)
        ours = align.estimate_matrix(landmarks, align.template_for(size), size)
        reference = estimate_norm(landmarks, size)
        corners = np.array([[0, 0, 1], [600, 0, 1], [0, 600, 1], [600, 600, 1]], np.float64)
        assert np.abs(corners @ ours.T - corners @ reference.T).max() < 0.05  # pixels


def test_letterbox_keeps_the_aspect_ratio_top_left():
    frame = np.full((300, 600, 3), 200, np.uint8)
    canvas = np.zeros((640, 640, 3), np.uint8)
    scale = detect.letterbox(frame, canvas)
    assert scale == pytest.approx(640 / 600)
    assert canvas[:319].min() == 200 and canvas[321:].max() == 0


def test_box_mask_is_zero_at_the_border_and_one_inside():
    mask = blend.box_mask(128)
    assert mask.shape == (128, 128) and mask.dtype == np.float32
    assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0
    assert mask[64, 64] == pytest.approx(1.0, abs=1e-3)


def test_paste_back_writes_only_the_paste_area():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    crop, matrix = align.warp_face(frame, LANDMARKS, "arcface_128", 128)
    result = blend.paste_back(frame.copy(), np.full_like(crop, 255), blend.box_mask(128), matrix)
    x1, y1, x2, y2 = blend.paste_area(matrix, 128, frame.shape)
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(result[outside], frame[outside])
    centre = np.round(LANDMARKS.mean(axis=0)).astype(int)
    assert (result[centre[1], centre[0]] == 255).all()


def test_paste_back_of_a_face_off_the_frame_edge_is_clipped():
    frame = np.zeros((200, 200, 3), np.uint8)
    landmarks = LANDMARKS - 130  # partly outside the frame
    crop, matrix = align.warp_face(frame, landmarks, "arcface_128", 128)
    result = blend.paste_back(frame.copy(), np.full_like(crop, 255), blend.box_mask(128), matrix)
    assert result.shape == frame.shape and result.max() == 255


def face(x1, y1, x2, y2, embedding=None) -> Face:
    return Face(np.array([x1, y1, x2, y2], np.float32), 0.9, np.zeros((5, 2), np.float32), embedding)


def test_selection_orders_and_picks():
    faces = [face(0, 0, 10, 10), face(50, 20, 100, 90), face(200, 5, 230, 30)]
    assert select.select_faces(faces, "one")[0] is faces[1]
    assert select.select_faces(faces, "one", order="right-left")[0] is faces[2]
    assert select.select_faces(faces, "one", order="top-bottom")[0] is faces[0]
    assert select.select_faces(faces, "one", order="left-right", index=1)[0] is faces[1]
    assert select.select_faces(faces, "one", index=5) == []
    assert select.select_faces(faces, "many") == faces


def test_reference_selection_uses_the_cosine_distance():
    a, b = np.eye(3, dtype=np.float32)[:2]
    near = average_identity(np.stack([a, a, b * 0.2]))
    faces = [face(0, 0, 1, 1, a), face(0, 0, 1, 1, b), face(0, 0, 1, 1, near)]
    chosen = select.select_faces(faces, "reference", reference=a, distance=0.1)
    assert chosen == [faces[0], faces[2]] and face_distance(a, near) < 0.1


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_images_of_every_mode_become_bgr(tmp_path):
    gray = np.tile(np.arange(256, dtype=np.uint8), (10, 1))
    deep = (gray.astype(np.uint16) * 257).astype(np.uint16)
    rgba = np.dstack([np.full((10, 256, 3), (10, 20, 30), np.uint8), gray])
    cases = {"gray.png": png_bytes(gray), "deep.png": png_bytes(deep), "rgba.png": png_bytes(rgba)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert np.array_equal(read_image(tmp_path / "gray.png").frame[:, :, 0], gray)
    assert np.array_equal(read_image(tmp_path / "deep.png").frame[:, :, 1], gray)
    picture = read_image(tmp_path / "rgba.png")
    assert picture.frame[0, 0].tolist() == [30, 20, 10] and np.array_equal(picture.alpha, gray)
    decoded = cv2.imdecode(np.frombuffer(encode_image(picture, ".png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (10, 256, 4) and np.array_equal(decoded[:, :, 3], gray)


def test_exif_orientation_is_applied(tmp_path):
    frame = cv2.imread(str(TWO_FACES))
    image = Image.fromarray(frame[:, :, ::-1])
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    picture = read_image(tmp_path / "rotated.jpg")
    assert picture.frame.shape[:2] == (frame.shape[1], frame.shape[0])


def test_a_pixel_bomb_is_refused_before_decoding(tmp_path):
    """A PNG whose header claims 100000x100000 pixels but holds almost no data."""
    header = png_bytes(np.zeros((1, 1), np.uint8))
    bomb = bytearray(header)
    bomb[16:24] = (100000).to_bytes(4, "big") * 2  # IHDR width and height
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # the IHDR chunk's CRC
    (tmp_path / "bomb.png").write_bytes(bytes(bomb))
    with pytest.raises(OverLimit, match=r"^bomb.png: 10,000,000,000 pixels, over the limit of 50,000,000$"):
        read_image(tmp_path / "bomb.png", max_pixels=50_000_000)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(np.zeros((100, 300), np.uint8)))
    with pytest.raises(OverLimit, match=r"^big.png: 300x100 is 30,000 pixels, over the limit of 20,000$"):
        read_image(big, max_pixels=20_000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"plain text, not a picture", "not an image"),
        (None, "cannot decode"),  # a truncated JPEG
    ],
)
def test_unreadable_images_give_one_line(tmp_path, content, message):
    path = tmp_path / "bad.jpg"
    path.write_bytes(TWO_FACES.read_bytes()[:2000] if content is None else content)
    with pytest.raises(ImageError, match=message) as caught:
        read_image(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith("bad.jpg:")


def test_output_keeps_the_frame_for_jpeg(tmp_path):
    frame = np.full((8, 8, 3), 77, np.uint8)
    data = encode_image(Picture(frame, np.zeros((8, 8), np.uint8)), ".jpg")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (8, 8, 3) and abs(int(decoded.mean()) - 77) <= 1


def test_the_detector_canvas_stops_at_the_frame_rounded_up_to_the_stride():
    any_size = detect.DetectorInput((640, 640), 32, any_size=True)
    assert any_size.canvas([(1080, 1920, 3)]) == (384, 640)  # 640x360 of frame
    assert any_size.canvas([(1920, 1080, 3)]) == (640, 384)
    assert any_size.canvas([(480, 640, 3)]) == (480, 640)
    assert any_size.canvas([(1080, 1920, 3), (1920, 1080, 3)]) == (640, 640)  # one batch, one canvas
    assert detect.DetectorInput((640, 640)).canvas([(1080, 1920, 3)]) == (640, 640)  # one size only
