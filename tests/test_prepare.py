"""Preparation without a server: batch-axis surgery, generated configs, twins, refusals."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelplane import twins
from modelplane.__main__ import main as modelplane_main
from modelplane.configs import CPU_BACKEND, from_text
from modelplane.families import get_family
from modelplane.prepare import STAMP, Options, PreparationError, prepare_repository, read_stamp
from modelplane.roles.swapper import read_swapper
from modelplane.variants import Variant, add_variants
from orchestrator.faces.detect import faces_of, letterbox
from tests.helpers.paths import TWO_FACES

DETECTOR_NAMES = [f"{kind}_{stride}" for kind in ("scores", "boxes", "landmarks") for stride in (8, 16, 32)]
FACES = [
    twins.ScriptedFace((100, 120, 180, 220), ((125, 160), (155, 160), (140, 180), (128, 200), (152, 200))),
    twins.ScriptedFace((400, 300, 560, 500), ((450, 380), (510, 380), (480, 420), (455, 460), (505, 460))),
]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def detector_blob(frame: np.ndarray) -> np.ndarray:
    canvas = np.zeros((640, 640, 3), np.uint8)
    letterbox(frame, canvas)
    return ((canvas[:, :, ::-1].astype(np.float32) - 127.5) / 128).transpose(2, 0, 1)[None]


def test_real_scrfd_comes_out_batch_dynamic_and_unchanged(repository, scrfd):
    prepared = onnx.load(str(repository / "detector" / "1" / "model.onnx"))
    assert prepared.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    frame = cv2.imread(str(TWO_FACES))
    blobs = np.concatenate(
        [detector_blob(frame), detector_blob(cv2.flip(frame, 1)), detector_blob(frame[::2])]
    )
    original = ort.InferenceSession(str(scrfd))
    expected = [original.run(None, {"images": blob[None]}) for blob in blobs]
    got = ort.InferenceSession(str(repository / "detector" / "1" / "model.onnx")).run(None, {"images": blobs})
    for index, output in enumerate(got):
        assert output.shape[0] == 3
        np.testing.assert_allclose(output, np.concatenate([e[index] for e in expected]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batched", [True, False], ids=["batched-export", "unbatched-export"])
def test_detector_exports_gain_a_real_batch_axis(tmp_path, batched):
    source = tmp_path / "detector.onnx"
    onnx.save(twins.detector(FACES, batched=batched), str(source))
    rank = len(onnx.load(str(source)).graph.output[0].type.tensor_type.shape.dim)
    assert rank == (3 if batched else 2)
    prepare_repository({"detector": source}, tmp_path / "repo", Options(verify_batch=2))
    prepared = onnx.load(str(tmp_path / "repo" / "detector" / "1" / "model.onnx"))
    outputs = session(prepared).run(None, {"images": np.zeros((2, 3, 640, 640), np.float32)})
    decode = ort.InferenceSession(str(tmp_path / "repo" / "detector_postprocess" / "1" / "model.onnx"))
    names = [o.name for o in decode.get_outputs()]
    decoded = decode.run(names, dict(zip(DETECTOR_NAMES, outputs, strict=True)))
    detections = dict(zip(names, decoded, strict=True))
    for image in range(2):
        faces = faces_of(detections, image, 1.0)
        assert len(faces) == len(FACES)
        for face, scripted in zip(sorted(faces, key=lambda f: f.box[0]), FACES, strict=True):
            np.testing.assert_allclose(face.box, scripted.box, atol=1e-3)
            np.testing.assert_allclose(face.landmarks, scripted.landmarks, atol=1e-3)


def test_a_detector_whose_graph_has_one_size_is_served_at_that_size(tmp_path):
    """The twin's outputs are constants of 640x640's anchor counts: it cannot take another size, so
    face_detect keeps a fixed input, and the real SCRFD (whose shapes follow its input) does not."""
    source = tmp_path / "detector.onnx"
    onnx.save(twins.detector(FACES), str(source))
    prepare_repository({"detector": source}, tmp_path / "repo", Options(verify_batch=2))
    for model, dims in (("face_detect", [640, 640, 3]), ("detector", [3, 640, 640])):
        for rendering in ("config.pbtxt", "configs/cpu.pbtxt"):
            config = from_text((tmp_path / "repo" / model / rendering).read_text())
            assert list(config.input[0].dims) == dims, (model, rendering)
    assert (
        from_text((tmp_path / "repo" / "face_detect" / "config.pbtxt").read_text())
        .parameters["any_size"]
        .string_value
        == "false"
    )


def test_the_real_scrfd_is_served_at_any_size(repository):
    for model, dims in (
        ("face_detect", [-1, -1, 3]),
        ("face_detect_raw", [-1, -1, 3]),
        ("detector", [3, -1, -1]),
    ):
        for rendering in ("config.pbtxt", "configs/cpu.pbtxt"):
            config = from_text((repository / model / rendering).read_text())
            assert list(config.input[0].dims) == dims, (model, rendering)
    warmup = from_text((repository / "detector" / "config.pbtxt").read_text()).model_warmup[0]
    assert list(warmup.inputs["images"].dims) == [3, 640, 640]  # warmed up at the reference size


def test_hard_coded_reshape_is_freed_and_emap_stays_last(twin_files, repository):
    original = onnx.load(str(twin_files["swapper"]))
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session(original).run(
            None, {"target": np.zeros((2, 3, 128, 128), np.float32), "source": np.zeros((2, 512), np.float32)}
        )
    prepared = onnx.load(str(repository / "swapper" / "1" / "model.onnx"))
    np.testing.assert_array_equal(
        numpy_helper.to_array(prepared.graph.initializer[-1]),
        numpy_helper.to_array(original.graph.initializer[-1]),
    )
    assert read_swapper(get_family("swapper", "inswapper"), prepared).emap.shape == (512, 512)
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (4, 3, 128, 128)).astype(np.float32)
    source = rng.standard_normal((4, 512)).astype(np.float32)
    together = session(prepared).run(None, {"target": target, "source": source})[0]
    for i in range(4):
        single = session(prepared).run(None, {"target": target[i : i + 1], "source": source[i : i + 1]})[0]
        np.testing.assert_allclose(together[i : i + 1], single, rtol=1e-6)


def test_configs_follow_the_model_tensor_names(tmp_path):
    renamed = twins.enhancer()
    for node in renamed.graph.node:
        node.input[:] = ["face_in" if name == "input" else name for name in node.input]
        node.output[:] = ["face_out" if name == "output" else name for name in node.output]
    renamed.graph.input[0].name = "face_in"
    renamed.graph.output[0].name = "face_out"
    source = tmp_path / "enhancer.onnx"
    onnx.save(renamed, str(source))
    prepare_repository({"enhancer": source}, tmp_path / "repo", Options(verify_batch=2))
    gpu = from_text((tmp_path / "repo" / "enhancer" / "config.pbtxt").read_text())
    cpu = from_text((tmp_path / "repo" / "enhancer" / "configs" / "cpu.pbtxt").read_text())
    assert [t.name for t in gpu.input] == ["face_in"] and [t.name for t in gpu.output] == ["face_out"]
    assert list(gpu.input[0].dims) == [3, 512, 512]
    assert gpu.backend == "onnxruntime" and cpu.backend == CPU_BACKEND
    assert gpu.instance_group[0].kind != cpu.instance_group[0].kind
    for field in ("input", "output", "max_batch_size", "dynamic_batching", "model_warmup"):
        assert getattr(gpu, field) == getattr(cpu, field), field
    ensemble = from_text((tmp_path / "repo" / "face_enhance" / "config.pbtxt").read_text())
    assert ensemble.ensemble_scheduling.step[1].input_map["face_in"] == "enhancer_input"
    assert ensemble.max_batch_size <= gpu.max_batch_size


def test_every_composing_model_batches_at_least_as_much_as_its_ensemble(repository):
    for ensemble in ("face_detect", "face_detect_raw", "face_embed", "face_swap", "face_enhance"):
        config = from_text((repository / ensemble / "config.pbtxt").read_text())
        assert config.platform == "ensemble"
        for step in config.ensemble_scheduling.step:
            composing = from_text((repository / step.model_name / "config.pbtxt").read_text())
            if composing.max_batch_size == 0:  # unbatched: takes the ensemble's whole batch on axis 0
                assert all(t.dims[0] == -1 for t in [*composing.input, *composing.output])
                continue
            assert composing.max_batch_size >= config.max_batch_size > 0
            assert composing.HasField("dynamic_batching")


def test_tensorrt_option_adds_the_fp16_accelerator_to_the_gpu_rendering_only(tmp_path, twin_files):
    prepare_repository({"enhancer": twin_files["enhancer"]}, tmp_path, Options(tensorrt=True, verify_batch=2))
    gpu = from_text((tmp_path / "enhancer" / "config.pbtxt").read_text())
    cpu = from_text((tmp_path / "enhancer" / "configs" / "cpu.pbtxt").read_text())
    accelerator = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator


# --- refusals: a file that does not fit its role is named, with the tensor and what was expected


def refusal(tmp_path, role: str, model: onnx.ModelProto | bytes) -> str:
    source = tmp_path / f"{role}.onnx"
    if isinstance(model, bytes):
        source.write_bytes(model)
    else:
        onnx.save(model, str(source))
    with pytest.raises(PreparationError) as caught:
        prepare_repository({role: source}, tmp_path / "repo", Options(verify_batch=2))
    assert not (tmp_path / "repo" / STAMP).exists()
    return str(caught.value)


def test_enhancer_given_as_swapper_is_refused(tmp_path):
    message = refusal(tmp_path, "swapper", twins.enhancer())
    assert message.startswith("swapper:") and "expected two inputs" in message and "input" in message


def test_swapper_given_as_recognizer_is_refused(tmp_path):
    message = refusal(tmp_path, "recognizer", twins.swapper())
    assert message.startswith("recognizer:") and "exactly one input" in message


def test_detector_without_landmarks_is_refused(tmp_path):
    model = twins.detector(FACES)
    del model.graph.output[6:]
    message = refusal(tmp_path, "detector", model)
    assert message.startswith("detector:") and "landmarks" in message


def test_recognizer_with_a_wrong_image_size_is_refused(tmp_path):
    model = twins.recognizer()
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 96
    message = refusal(tmp_path, "recognizer", model)
    assert "recognizer: tensor 'input.1': expected a fixed square image size" in message and "96" in message


def test_swapper_without_a_square_emap_is_refused(tmp_path):
    model = twins.swapper()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((3, 4), np.float32), "not_emap"))
    message = refusal(tmp_path, "swapper", model)
    assert "swapper: family inswapper: tensor 'not_emap': expected the emap [512,512] as the last" in message


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    message = refusal(tmp_path, "enhancer", b"this is not a model")
    assert message.startswith("enhancer: cannot read") and "enhancer.onnx" in message


def test_a_model_that_mixes_its_batch_is_refused(tmp_path):
    """A graph summing over the batch cannot be batched: verification must catch it."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Add", ["input", "mean"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mixer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    message = refusal(tmp_path, "enhancer", model)
    assert "enhancer: output 'output' at batch 2 differs from 2 batch-1 runs" in message


def test_failed_preparation_leaves_the_previous_repository_intact(tmp_path, twin_files):
    repo = tmp_path / "repo"
    prepare_repository({"enhancer": twin_files["enhancer"]}, repo, Options(verify_batch=2))
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage")
    with pytest.raises(PreparationError):
        prepare_repository({"enhancer": broken}, repo, Options(verify_batch=2))
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    assert after == before
    assert read_stamp(repo) is not None


def test_prepare_command_reports_one_line_and_fails(tmp_path, capsys):
    broken = tmp_path / "swapper.onnx"
    broken.write_bytes(b"garbage")
    code = modelplane_main(
        [
            "prepare",
            "--repository",
            str(tmp_path / "repo"),
            "--models-dir",
            str(tmp_path),
            "--swapper",
            str(broken),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: no detector, recognizer, enhancer model in") and err.count("\n") == 1
    assert "Traceback" not in err


# --- twins: their documented behaviour


def test_swapper_twin_mixes_target_and_source_colour():
    run = session(twins.swapper())
    rng = np.random.default_rng(1)
    target = rng.uniform(0, 1, (1, 3, 128, 128)).astype(np.float32)
    source, other = rng.standard_normal((2, 1, 512)).astype(np.float32)
    output = run.run(None, {"target": target, "source": source})[0]
    colours = numpy_helper.to_array(twins.swapper().graph.initializer[0])
    tint = 1 / (1 + np.exp(-(source @ colours)))
    np.testing.assert_allclose(output, 0.5 * target + 0.5 * tint.reshape(1, 3, 1, 1), atol=1e-6)
    assert not np.allclose(output, target, atol=0.05)
    assert not np.allclose(run.run(None, {"target": target, "source": other})[0], output, atol=0.01)
    assert not np.allclose(
        run.run(None, {"target": target[:, :, ::-1].copy(), "source": source})[0], output, atol=0.01
    )
    assert output.min() >= 0 and output.max() <= 1


def test_enhancer_twin_raises_contrast():
    image = np.linspace(-1, 1, 3 * 512 * 512, dtype=np.float32).reshape(1, 3, 512, 512)
    output = session(twins.enhancer()).run(None, {"input": image})[0]
    np.testing.assert_allclose(output, np.clip(1.25 * image, -1, 1), atol=1e-6)


def test_recognizer_twin_tells_faces_apart():
    run = session(twins.recognizer())
    frame = cv2.imread(str(TWO_FACES))
    left = cv2.resize(frame[79:169, 139:210], (112, 112))  # the two faces SCRFD finds in the photo
    right = cv2.resize(frame[54:163, 260:343], (112, 112))
    shifted = np.roll(left, 2, axis=1)
    crops = np.stack([left, shifted, right])[:, :, :, ::-1].transpose(0, 3, 1, 2)
    embeddings = run.run(None, {"input.1": ((crops - 127.5) / 127.5).astype(np.float32)})[0]
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > 0.9
    assert unit[0] @ unit[2] < unit[0] @ unit[1] - 0.1


def test_twins_are_the_same_file_every_time():
    assert twins.swapper().SerializeToString() == twins.swapper().SerializeToString()
    assert twins.recognizer().SerializeToString() == twins.recognizer().SerializeToString()


def test_adding_variants_again_removes_those_no_longer_asked_for(tmp_path, twin_files):
    repository = tmp_path / "repository"
    (repository / "face_enhance").mkdir(parents=True)  # a default model's folder: never touched
    asked = [Variant(name, "enhancer", "gfpgan", twin_files["enhancer"]) for name in ("sharp", "soft v2")]
    first = add_variants(repository, asked, Options(warmup=False))
    kept = [name for name in first if name.endswith("__sharp")]
    dropped = [name for name in first if name.endswith("__soft_v2")]
    assert kept and len(dropped) == len(kept) and len(first) == 2 * len(kept)
    assert {p.name for p in repository.iterdir()} == {"face_enhance", *first}
    second = add_variants(repository, asked[:1], Options(warmup=False))
    assert sorted(second) == sorted(kept)
    assert {p.name for p in repository.iterdir()} == {"face_enhance", *kept}
    assert all((repository / name / "config.pbtxt").is_file() for name in kept)
