"""Every family's twins served by a real Triton: the source path of each swapper family (emap, unit
embedding, converter, aligned source crop) against NumPy from the twin's constants, the source vector
and swap_weight as FaceFusion forms them (from the raw embedding, against ONNX Runtime on the twin
files), CodeFormer's weight reaching the model, the family's parameters in the configs, and a swap
that changes only the face area."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from insightface.data import get_image
from onnx import numpy_helper

from modelplane import family_twins, twins
from modelplane.families import CONVERTER, CONVERTER_UNIT, EMAP, EMBEDDING, IMAGE, get_family
from modelplane.local_server import running_server
from modelplane.prepare import Options, prepare_repository
from orchestrator.errors import InputError
from orchestrator.faces.align import template_for, warp_face
from orchestrator.faces.select import order_faces
from orchestrator.images import read_image
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from orchestrator.triton import TritonClient
from tests.helpers.chain import face_sources
from tests.helpers.paths import SCRFD, TWO_FACES
from tests.helpers.triton import ensemble_layout

# one server per pair: every swapper family, every enhancer family up to 512 px
PAIRS = [
    ("inswapper", "gpen_bfr_256"),
    ("hyperswap", "codeformer"),
    ("ghost", "restoreformer_plus_plus"),
    ("simswap", "gpen_bfr_512"),
    ("simswap_unofficial", "gfpgan"),
    ("hififace", "gfpgan"),
    ("blendswap", "gfpgan"),
    ("uniface", "gfpgan"),
]


class Served:
    def __init__(self, swapper: str, enhancer: str, files: dict[str, Path], client: TritonClient):
        self.swapper, self.enhancer = get_family("swapper", swapper), get_family("enhancer", enhancer)
        self.files, self.client = files, client

    def initializer(self, role: str, name: str) -> np.ndarray:
        model = onnx.load(str(self.files[role]))
        return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)

    def source_vector(self, embedding: np.ndarray) -> np.ndarray:
        """The family's source vector of a unit embedding, in NumPy from the twins' constants."""
        kind = self.swapper.source
        vector = embedding.astype(np.float64)
        if kind == EMAP:
            vector = vector @ self.initializer("swapper", "emap")
        if kind in (CONVERTER, CONVERTER_UNIT):
            vector = vector @ self.initializer("converter", "matrix")
        if kind in (EMAP, EMBEDDING, CONVERTER_UNIT):
            vector /= np.linalg.norm(vector)
        return vector

    def tint(self, source: np.ndarray) -> np.ndarray:
        """The twin's RGB tint in 0..1 for a unit embedding, or for an aligned uint8 BGR source crop."""
        if self.swapper.source == IMAGE:
            return (source[..., ::-1] / 255.0).mean(axis=(0, 1))
        return 1 / (1 + np.exp(-(self.source_vector(source) @ self.initializer("swapper", "colours"))))

    def expected_swap(self, crops: np.ndarray, source: np.ndarray) -> np.ndarray:
        rgb = crops[..., ::-1] / 255.0
        mixed = family_twins.MIX * rgb + family_twins.MIX * self.tint(source)
        return np.round(mixed.clip(0, 1) * 255)[..., ::-1]

    def source_for(self, embedding: np.ndarray, seed: int) -> np.ndarray:
        """What face_swap takes as the source: the latent from swap_latent, or an aligned crop."""
        if self.swapper.source == IMAGE:
            size = self.swapper.source_size
            rng = np.random.default_rng(seed)  # a face-sized patch of one colour, with noise
            colour = rng.integers(30, 226, 3)
            return (colour + rng.integers(-30, 30, (size, size, 3))).astype(np.uint8)
        return self.client.latent(embedding)


@contextmanager
def serving(root: Path, swapper: str, enhancer: str, gpu_layout: bool = False) -> Iterator[Served]:
    """The two families' twins with the real SCRFD and the recognizer twin on a real Triton: the
    CPU rendering, or with `gpu_layout` the GPU rendering's ensembles of separate steps."""
    files = family_twins.write_family_twins(root / "twins", swapper, enhancer)
    files["detector"] = SCRFD
    files["recognizer"] = root / "twins" / "recognizer.onnx"
    onnx.save(twins.recognizer(), str(files["recognizer"]))
    options = Options(swapper_family=swapper, enhancer_family=enhancer, verify_batch=2)
    repository = root / "repository"
    prepare_repository(files, repository, options, twins=True)
    if gpu_layout:
        (root / "layout").mkdir()
        repository = ensemble_layout(repository, root / "layout")
    with running_server(repository, root / "triton") as server:
        client = TritonClient(server.grpc_url)
        yield Served(swapper, enhancer, files, client)
        client.close()


@pytest.fixture(scope="module", params=PAIRS, ids=["+".join(p) for p in PAIRS])
def served(request, tmp_path_factory):
    swapper, enhancer = request.param
    with serving(tmp_path_factory.mktemp(swapper), swapper, enhancer) as found:
        yield found


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(512)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


@pytest.mark.triton
def test_the_family_parameters_reach_clients_through_the_config(served):
    for model, family in (("face_swap", served.swapper), ("face_enhance", served.enhancer)):
        parameters = served.client.model_parameters(model)
        assert parameters["family"] == family.name and parameters["role"] == family.role
        assert parameters["template"] == family.template and int(parameters["size"]) == family.size
        assert served.client.crop_size(model) == family.size
    assert served.client.model_parameters("face_swap")["source"] == served.swapper.source


@pytest.mark.triton
def test_the_source_path_of_each_family_reaches_the_swap(served):
    check_swaps(served)


def check_swaps(served: Served) -> None:
    size = served.swapper.size
    crops = np.random.default_rng(3).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    results = []
    for seed in (4, 5):
        embedding = unit(seed)
        source = served.source_for(embedding, seed)
        got = served.client.swap(crops, source)
        expected = served.expected_swap(crops, source if served.swapper.source == IMAGE else embedding)
        assert np.abs(got.astype(int) - expected).max() <= 1
        results.append(got.astype(int))
    assert np.abs(results[0] - results[1]).mean() > 5  # another source, another result


@pytest.mark.triton
def test_swap_latent_is_the_family_source_vector(served):
    kind = served.swapper.source
    if kind == IMAGE:  # the aligned source crop goes to face_swap itself, checked above
        assert {t.name for t in served.client.model_info("face_swap").inputs} == {"crop", "source"}
        return
    embedding = unit(6)
    latent = served.client.latent(embedding).astype(np.float64)
    vector = served.source_vector(embedding)
    assert np.abs(latent - vector).max() <= 1e-5 * max(1.0, np.abs(vector).max())


@pytest.mark.triton
def test_the_enhancer_family_and_codeformers_weight(served):
    check_enhancements(served)


def check_enhancements(served: Served) -> None:
    size = served.enhancer.size
    crops = np.random.default_rng(7).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    signed = crops[..., ::-1] / 127.5 - 1
    weights = (0.1, 0.9) if served.enhancer.weight else (None,)
    results = []
    for weight in weights:
        gain = 1 + weight if served.enhancer.weight else family_twins.ENHANCE_GAIN
        expected = np.round((np.clip(gain * signed, -1, 1) + 1) * 127.5)[..., ::-1]
        got = served.client.enhance(crops, weight).astype(int)
        assert np.abs(got - expected).max() <= 1
        results.append(got)
    if served.enhancer.weight:
        assert np.abs(results[0] - results[1]).mean() > 5


@pytest.mark.triton
def test_a_swap_changes_only_the_face_area(served):
    frame = read_image(TWO_FACES, 10**8).frame
    swapper = FaceSwapper(served.client, SwapOptions(selector="many", enhance=True))
    faces = swapper.find_faces([frame])
    assert len(faces[0]) == 2
    source = TWO_FACES
    identity = swapper.identity([source])
    result = swapper.swap_frames([frame], faces, identity)[0]
    changed = np.abs(result.astype(int) - frame.astype(int)).max(axis=2) > 0
    area = np.zeros(frame.shape[:2], np.uint8)
    for face in faces[0]:
        for family in (served.swapper, served.enhancer):
            _, matrix = warp_face(frame, face.landmarks, family.template, family.size)
            square = np.full((family.size, family.size), 255, np.uint8)
            inverse = cv2.invertAffineTransform(matrix)
            area |= cv2.warpAffine(square, inverse, frame.shape[1::-1], flags=cv2.INTER_NEAREST)
    grown = cv2.dilate(area, np.ones((3, 3), np.uint8)) > 0  # the warp's edge pixel
    assert changed.sum() > 500 and not (changed & ~grown).any()


@pytest.mark.triton
@pytest.mark.parametrize(("swapper", "enhancer"), [("ghost", "codeformer"), ("uniface", "gpen_bfr_256")])
def test_the_gpu_renderings_ensembles_serve_converters_source_crops_and_weights(tmp_path, swapper, enhancer):
    """The GPU rendering's configs (a converter ensemble, a source-crop step, CodeFormer's [batch]
    weight reshaped in the config) loaded by a real Triton, each step on its own."""
    with serving(tmp_path, swapper, enhancer, gpu_layout=True) as served:
        check_swaps(served)
        check_enhancements(served)
        check_embeddings(served)
        check_source_vectors(served, tmp_path)


def run_twin(file: Path, batch: np.ndarray) -> np.ndarray:
    """A twin file's one output for `batch`, by ONNX Runtime on the file itself."""
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)})[0]


def recognizer_raw(served: Served, crops: np.ndarray) -> np.ndarray:
    """The recognizer twin's own output for uint8 BGR crops [B,112,112,3], ArcFace's preprocessing."""
    return run_twin(served.files["recognizer"], (crops[..., ::-1] - 127.5).transpose(0, 3, 1, 2) / 127.5)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def facefusion_latent(served: Served, raw: np.ndarray) -> np.ndarray:
    """FaceFusion's source vector of a raw embedding [D]: a converter's output as it comes (ghost) or
    scaled to unit length; emap and unit families from the unit embedding."""
    kind = served.swapper.source
    if kind in (CONVERTER, CONVERTER_UNIT):
        vector = run_twin(served.files["converter"], raw[None])[0].astype(np.float64)
        return vector if kind == CONVERTER else unit_rows(vector)
    return served.source_vector(unit_rows(raw))


def close(got: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5) -> bool:
    return np.abs(got - expected).max() <= tolerance * max(1.0, np.abs(expected).max())


@pytest.mark.triton
def test_face_embed_returns_the_recognizers_raw_output_beside_the_unit_one(served):
    check_embeddings(served)


def check_embeddings(served: Served) -> None:
    crops = np.random.default_rng(8).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    unit, raw = served.client.embed(crops)
    assert np.abs(raw - recognizer_raw(served, crops)).max() <= 1e-5
    assert np.abs(unit - unit_rows(raw)).max() <= 1e-6
    assert np.all(np.abs(np.linalg.norm(raw, axis=1) - 1) > 0.5)  # the twin's raw output is not unit length


@pytest.mark.triton
def test_the_source_vector_and_swap_weight_are_facefusions(served, tmp_path):
    check_source_vectors(served, tmp_path)


def check_source_vectors(served: Served, root: Path) -> None:
    """Two source photos: the identity's raw embedding is the mean of theirs, its latent FaceFusion's
    vector of that mean, and swap_weight mixes each target face's embedding (raw for ghost) into it."""
    crowd = root / "crowd.png"
    cv2.imwrite(str(crowd), get_image("t1"))
    sources = [TWO_FACES, crowd]
    if served.swapper.source == IMAGE:
        with pytest.raises(InputError, match="swap_weight needs a swapper whose source is an identity"):
            FaceSwapper(served.client, SwapOptions(swap_weight=0.2)).identity(sources)
        return
    swapper = FaceSwapper(served.client)
    raws = []
    for path in sources:
        (frame,), (faces,) = swapper.find_portrait_faces([read_image(path, 10**8).frame])
        crop, _ = warp_face(frame, order_faces(faces)[0].landmarks, template_for(112), 112)
        raws.append(recognizer_raw(served, crop[None])[0])
    identity = swapper.identity(sources)
    mean = np.mean(raws, axis=0)
    assert close(identity.raw_embedding, mean)
    expected = facefusion_latent(served, mean)
    assert close(identity.source, expected)
    if served.swapper.source == CONVERTER:  # the raw mean's, not the unit one's
        assert not close(identity.source, facefusion_latent(served, unit_rows(mean)), 0.05)

    frame = read_image(TWO_FACES, 10**8).frame
    faces = swapper.find_faces([frame])
    crops = np.stack([warp_face(frame, face.landmarks, template_for(112), 112)[0] for face in faces[0]])
    targets = recognizer_raw(served, crops)
    targets = targets if served.swapper.source == CONVERTER else unit_rows(targets)
    for weight in (0.0, 0.5, 1.0):
        latents = face_sources(
            FaceSwapper(served.client, SwapOptions(swap_weight=weight)), [frame], faces, identity
        )
        shift = 0.35 - 0.7 * weight  # FaceFusion: interp(weight, [0, 1], [0.35, -0.35])
        assert close(latents, (1 - shift) * identity.source.astype(np.float64) + shift * targets)
        if weight == 0.5:  # the neutral weight: the identity's latent itself
            assert np.array_equal(latents, np.broadcast_to(identity.source, latents.shape))
