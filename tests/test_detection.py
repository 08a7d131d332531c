"""Faces decoded in the model plane: the decoding graph against InsightFace's decoding, `face_detect`
against `face_detect_raw` decoded by InsightFace, per-image thresholds, the response size, and
the documented client that draws the boxes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from insightface.data import get_image
from insightface.model_zoo.scrfd import SCRFD, distance2bbox, distance2kps

from modelplane.configs import from_text
from modelplane.prepare import Options, prepare_repository
from orchestrator.faces.detect import DetectorInput, faces_of, letterbox
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.reference import iou
from tests.helpers.triton import infer

SIZE = (640, 640)
WIDE, TALL = (384, 640), (640, 384)  # (H, W) canvases cut to a 16:9 frame and to a 9:16 one
STRIDES = (8, 16, 32)
ANCHORS = 2
RESPONSE_LIMIT = 16 * 1024  # bytes of face_detect's answer per image
DETECTOR_STEPS = ("detector", "detector_postprocess")


def insightface_decode(raw: dict[str, np.ndarray], image: int, threshold: float, size=SIZE):
    """Candidates of one image as InsightFace's SCRFD.forward decodes them: boxes, scores, points."""
    boxes, scores, points = [], [], []
    for stride in STRIDES:
        height, width = size[0] // stride, size[1] // stride
        centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32) * stride
        centers = np.stack([centers.reshape(-1, 2)] * ANCHORS, axis=1).reshape(-1, 2)
        score = raw[f"scores_{stride}"][image].ravel()
        keep = np.where(score >= threshold)[0]
        boxes.append(distance2bbox(centers, raw[f"boxes_{stride}"][image] * stride)[keep])
        points.append(distance2kps(centers, raw[f"landmarks_{stride}"][image] * stride)[keep])
        scores.append(score[keep])
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(points).reshape(-1, 5, 2)


def insightface_nms(boxes, scores, iou_threshold: float) -> list[int]:
    """InsightFace's own SCRFD.nms, which counts box areas with +1 (inclusive pixels)."""
    return SCRFD.nms(SimpleNamespace(nms_thresh=iou_threshold), np.column_stack([boxes, scores]))


def onnx_nms(boxes, scores, iou_threshold: float, limit: int) -> list[int]:
    """Greedy NMS as ONNX's NonMaxSuppression defines it: plain areas, suppress IoU > threshold."""
    order, keep = np.argsort(-scores, kind="stable"), []
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        overlap = width * height
        order = rest[overlap / (areas[best] + areas[rest] - overlap) <= iou_threshold]
    return keep


def random_raw(images: int, seed: int = 0, size=SIZE) -> dict[str, np.ndarray]:
    """SCRFD-shaped noise: scores in 0..1, positive box distances, landmark offsets around the anchor."""
    rng = np.random.default_rng(seed)
    raw = {}
    for stride in STRIDES:
        anchors = (size[0] // stride) * (size[1] // stride) * ANCHORS
        raw[f"scores_{stride}"] = rng.uniform(0, 1, (images, anchors, 1)).astype(np.float32)
        raw[f"boxes_{stride}"] = rng.uniform(0.5, 3, (images, anchors, 4)).astype(np.float32)
        raw[f"landmarks_{stride}"] = rng.uniform(-2, 2, (images, anchors, 10)).astype(np.float32)
    return raw


@pytest.fixture(scope="module")
def decoder(repository) -> ort.InferenceSession:
    """The repository's decoding graph (detector_postprocess) on ONNX Runtime."""
    return ort.InferenceSession(str(repository / "detector_postprocess" / "1" / "model.onnx"))


def decode(decoder, feeds) -> dict[str, np.ndarray]:
    names = [o.name for o in decoder.get_outputs()]
    return dict(zip(names, decoder.run(names, feeds), strict=True))


@pytest.mark.parametrize("size", [SIZE, WIDE, TALL], ids=["640x640", "640x384", "384x640"])
def test_decoding_graph_equals_insightface_decoding_with_onnx_nms(decoder, size):
    """Noise with thousands of candidates, each image with thresholds of its own, in one batch, at
    the default canvas and at canvases cut to a landscape or portrait frame (`canvas_size`)."""
    raw = random_raw(3, size=size)
    thresholds = [(0.5, 0.4), (0.97, 0.4), (0.8, 0.7)]
    canvas = {} if size == SIZE else {"canvas_size": np.array([size] * 3, np.int64)}
    got = decode(
        decoder,
        raw
        | canvas
        | {
            "score_threshold": np.array([[s] for s, _ in thresholds], np.float32),
            "iou_threshold": np.array([[i] for _, i in thresholds], np.float32),
        },
    )
    limit = got["boxes"].shape[1]
    for image, (score_threshold, iou_threshold) in enumerate(thresholds):
        boxes, scores, points = insightface_decode(raw, image, score_threshold, size)
        keep = onnx_nms(boxes, scores, iou_threshold, limit)
        count = int(got["count"][image, 0])
        assert count == len(keep) > 0
        np.testing.assert_allclose(got["boxes"][image, :count], boxes[keep], atol=1e-4)
        np.testing.assert_allclose(got["scores"][image, :count], scores[keep])
        np.testing.assert_allclose(got["landmarks"][image, :count], points[keep], atol=1e-4)
        for name in ("boxes", "scores", "landmarks"):
            assert not got[name][image, count:].any()  # zero padding after the faces


def test_a_flood_of_candidates_is_capped_best_first(decoder):
    raw = random_raw(1, seed=1)
    got = decode(decoder, raw | {"score_threshold": np.array([[0.01]], np.float32)})
    limit = got["boxes"].shape[1]
    assert got["count"][0, 0] == limit
    assert (np.diff(got["scores"][0]) <= 0).all()


def test_defaults_are_insightfaces(decoder):
    raw = random_raw(2, seed=2)
    explicit = decode(
        decoder,
        raw
        | {
            "score_threshold": np.full((2, 1), 0.5, np.float32),
            "iou_threshold": np.full((2, 1), 0.4, np.float32),
        },
    )
    defaults = decode(decoder, raw)
    for name, value in explicit.items():
        np.testing.assert_array_equal(defaults[name], value)


def test_the_decoding_graph_stays_off_tensorrt_and_unbatched(tmp_path, scrfd):
    """TensorRT is for the networks; the onnxruntime backend takes optional inputs only unbatched."""
    prepare_repository({"detector": scrfd}, tmp_path, Options(tensorrt=True, verify_batch=2))
    detector, decoding = (from_text((tmp_path / m / "config.pbtxt").read_text()) for m in DETECTOR_STEPS)
    assert detector.optimization.execution_accelerators.gpu_execution_accelerator
    assert not decoding.optimization.execution_accelerators.gpu_execution_accelerator
    assert decoding.max_batch_size == 0 and all(t.dims[0] == -1 for t in decoding.input)
    optional = {t.name for t in decoding.input if t.optional}
    assert optional == {"score_threshold", "iou_threshold", "canvas_size"}


def letterboxed(frame: np.ndarray) -> tuple[np.ndarray, float]:
    canvas = np.zeros((*SIZE, 3), np.uint8)
    return canvas, letterbox(frame, canvas)


PHOTOS = {"two_faces": lambda: cv2.imread(str(TWO_FACES)), "t1": lambda: get_image("t1")}


@pytest.mark.parametrize("photo", PHOTOS)
def test_face_detect_agrees_with_insightface_decoding_face_detect_raw(grpc_client, photo):
    """The raw-anchor path stays available, and InsightFace's decoding of it gives face_detect's faces."""
    canvas, _ = letterboxed(PHOTOS[photo]())
    raw = infer(grpc_client, "face_detect_raw", {"image": canvas[None]})
    boxes, scores, points = insightface_decode(raw, 0, 0.5)
    keep = insightface_nms(boxes, scores, 0.4)
    got = infer(grpc_client, "face_detect", {"image": canvas[None]})
    count = int(got["count"][0, 0])
    assert count == len(keep) > 0
    for i, expected in enumerate(keep):
        assert iou(got["boxes"][0, i], boxes[expected]) >= 0.99
        assert np.abs(got["landmarks"][0, i] - points[expected]).max() <= 1.0
        assert got["scores"][0, i] == pytest.approx(scores[expected], abs=1e-6)


def reference_faces(frame: np.ndarray):
    """InsightFace's SCRFD on the frame at 640x640, its own letterbox: boxes [N,5], landmarks [N,5,2]."""
    detector = SCRFD(str(ROOT.parent / "shared" / "models" / "scrfd_2.5g_kps.onnx"))
    detector.prepare(-1, input_size=SIZE, det_thresh=0.5)
    return detector.detect(frame, input_size=SIZE)


FRAMES = {
    "two_faces": lambda: cv2.imread(str(TWO_FACES)),
    "t1": lambda: get_image("t1"),
    "t1 in 1080p": lambda: cv2.copyMakeBorder(get_image("t1"), 97, 97, 320, 320, cv2.BORDER_CONSTANT),
    "t1 portrait": lambda: cv2.copyMakeBorder(get_image("t1"), 700, 700, 0, 0, cv2.BORDER_CONSTANT),
}


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("server", ["fused", "ensembles"])
def test_a_canvas_cut_to_the_frame_finds_insightfaces_faces(request, frame, server):
    """face_detect takes any size: the frame at SCRFD's scale on a canvas that stops at its content
    (rounded up to the stride; 640x384 for 16:9) finds InsightFace's faces on its 640x640 canvas, in
    the fused CPU rendering and as ensembles of steps (the GPU rendering's shape)."""
    image = FRAMES[frame]()
    detector = DetectorInput(SIZE, 32, any_size=True)
    canvas = np.zeros((*detector.canvas([image.shape]), 3), np.uint8)
    assert canvas.shape[0] * canvas.shape[1] < SIZE[0] * SIZE[1]  # less to compute than 640x640
    scale = letterbox(image, canvas, SIZE)
    served = request.getfixturevalue({"fused": "triton", "ensembles": "ensemble_triton"}[server])
    client = grpcclient.InferenceServerClient(served.grpc_url)
    faces = faces_of(infer(client, "face_detect", {"image": canvas[None]}), 0, scale)
    boxes, landmarks = reference_faces(image)
    assert len(faces) == len(boxes) > 0
    for box, points in zip(boxes, landmarks, strict=True):
        match = max(faces, key=lambda face: iou(face.box, box[:4]))
        assert iou(match.box, box[:4]) >= 0.99
        assert np.abs(match.landmarks - points).max() <= 1.0
        assert match.score == pytest.approx(box[4], abs=0.01)


def test_the_detector_states_what_it_takes(grpc_client, triton_client):
    """Clients read the reference size and stride from face_detect's configuration."""
    config = grpc_client.get_model_config("face_detect").config
    assert list(config.input[0].dims) == [-1, -1, 3]
    stated = {key: config.parameters[key].string_value for key in ("detector_size", "stride", "any_size")}
    assert stated == {"detector_size": "640x640", "stride": "32", "any_size": "true"}
    assert triton_client.detector_input == DetectorInput(SIZE, 32, any_size=True)


def test_thresholds_apply_per_image_of_a_request(grpc_client):
    canvas, _ = letterboxed(get_image("t1"))
    raw = infer(grpc_client, "face_detect_raw", {"image": canvas[None]})
    thresholds = [(0.5, 0.4), (0.9, 0.4), (0.05, 0.4), (0.05, 0.8)]
    got = infer(
        grpc_client,
        "face_detect",
        {
            "image": np.repeat(canvas[None], len(thresholds), axis=0),
            "score_threshold": np.array([[s] for s, _ in thresholds], np.float32),
            "iou_threshold": np.array([[i] for _, i in thresholds], np.float32),
        },
    )
    counts = got["count"][:, 0].tolist()
    limit = got["boxes"].shape[1]
    expected = []
    for score_threshold, iou_threshold in thresholds:
        boxes, scores, _ = insightface_decode(raw, 0, score_threshold)
        expected.append(len(onnx_nms(boxes, scores, iou_threshold, limit)))
    assert counts == expected
    assert len(set(counts)) == len(counts)  # each threshold made a difference


def test_no_face_gives_a_count_of_zero_and_zero_rows(grpc_client):
    got = infer(grpc_client, "face_detect", {"image": np.zeros((2, *SIZE, 3), np.uint8)})
    assert got["count"].tolist() == [[0], [0]]
    assert not any(got[name].any() for name in ("boxes", "scores", "landmarks"))


def request(canvases: np.ndarray, score_threshold: float | None = None) -> list[grpcclient.InferInput]:
    tensors = [grpcclient.InferInput("image", list(canvases.shape), "UINT8")]
    tensors[0].set_data_from_numpy(canvases)
    if score_threshold is not None:
        tensors.append(grpcclient.InferInput("score_threshold", [len(canvases), 1], "FP32"))
        tensors[1].set_data_from_numpy(np.full((len(canvases), 1), score_threshold, np.float32))
    return tensors


@pytest.mark.parametrize("batch", [1, 4])
def test_the_answer_is_at_most_16_kb_per_image(grpc_client, batch):
    canvas, _ = letterboxed(get_image("t1"))
    result = grpc_client.infer("face_detect", request(np.repeat(canvas[None], batch, axis=0)))
    assert (result.as_numpy("count") > 0).all()
    assert result.get_response().ByteSize() <= RESPONSE_LIMIT * batch


def test_concurrent_requests_with_and_without_thresholds_each_get_their_own_answer(grpc_client):
    """The dynamic batcher may gather them; requests without the optional input keep the default."""
    canvas, _ = letterboxed(get_image("t1"))
    batch = canvas[None]
    thresholds = [None, 0.05, 0.5, 0.9, None, 0.05, 0.9, 0.5]

    def counts(threshold):
        result = grpc_client.infer("face_detect", request(batch, threshold))
        return int(result.as_numpy("count")[0, 0])

    alone = {threshold: counts(threshold) for threshold in set(thresholds)}
    with ThreadPoolExecutor(len(thresholds)) as pool:
        together = list(pool.map(counts, thresholds))
    assert together == [alone[t] for t in thresholds]
    assert alone[None] == alone[0.5] and alone[0.05] > alone[0.5] > alone[0.9]


def test_the_documented_detection_client_draws_the_boxes(triton, tmp_path):
    """model_repository/README.md shows this script: the boxes it draws are InsightFace's faces."""
    photo = tmp_path / "t1.png"
    frame = get_image("t1")
    cv2.imwrite(str(photo), frame)
    output = tmp_path / "boxes.png"
    command = [sys.executable, "scripts/triton_detect_example.py", str(photo), str(output)]
    result = subprocess.run(
        [*command, "--url", triton.grpc_url], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "6 faces" in result.stdout
    drawn = cv2.imread(str(output))
    detector = SCRFD(str(ROOT.parent / "shared" / "models" / "scrfd_2.5g_kps.onnx"))
    detector.prepare(-1, input_size=SIZE, det_thresh=0.5)
    boxes, _ = detector.detect(frame, input_size=SIZE)
    green = (drawn == (0, 255, 0)).all(axis=2)
    for x1, y1, x2, y2, _ in boxes:
        middle = round((x1 + x2) / 2)
        for y in (y1, y2):  # the top and bottom edges, within a pixel
            assert green[round(y) - 1 : round(y) + 2, middle].any()
    changed = (drawn != frame).any(axis=2)
    assert changed.sum() < 0.1 * changed.size  # boxes and points, not a repainted picture
