"""Model families: graphs against NumPy from each family's published constants, alignment onto each
template, refusals of files that do not fit their declared family, the manifest's families."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from modelplane import family_twins, graphs
from modelplane.__main__ import main as modelplane_main
from modelplane.errors import ManifestError, PreparationError
from modelplane.families import FAMILIES, get_family
from modelplane.manifest import load_manifest
from modelplane.prepare import Options, prepare_repository
from orchestrator.faces.align import TEMPLATES, estimate_matrix
from tests.helpers.paths import SCRFD

# FaceFusion's WARP_TEMPLATE_SET, as its face_helper.py publishes it (the reference for align.py)
FACEFUSION_TEMPLATES = {
    "arcface_112_v1": [[0.35473214, 0.45658929], [0.64526786, 0.45658929], [0.5, 0.61154464],
                       [0.37913393, 0.776875], [0.62086607, 0.776875]],
    "arcface_112_v2": [[0.34191607, 0.46157411], [0.65653393, 0.45983393], [0.500225, 0.64050536],
                       [0.37097589, 0.82469196], [0.63151696, 0.82325089]],
    "arcface_128": [[0.36167656, 0.40387734], [0.63696719, 0.40235469], [0.50019687, 0.56044219],
                    [0.38710391, 0.72160547], [0.61507734, 0.72034453]],
    "ffhq_512": [[0.37691676, 0.46864664], [0.62285697, 0.46912813], [0.50123859, 0.61331904],
                 [0.39308822, 0.725411], [0.61150205, 0.72490465]],
    "mtcnn_512": [[0.36562865, 0.46733799], [0.63305391, 0.46585885], [0.50019127, 0.61942959],
                  [0.39032951, 0.77598822], [0.61178945, 0.77476328]],
}  # fmt: skip
SMALL = [name for name, family in FAMILIES.items() if family.size <= 512]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_preprocess_graph_equals_the_family_normalisation(name):
    family = FAMILIES[name]
    size = family.size
    crops = np.random.default_rng(1).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    graph = graphs.image_to_tensor((size, size), family.input_norm, np.float32, "image", "tensor")
    got = run(graph, {"image": crops})[0]
    rgb = crops[..., ::-1] / 255.0  # FaceFusion's prepare_crop_frame
    expected = ((rgb - np.array(family.mean)) / np.array(family.std)).transpose(0, 3, 1, 2)
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_postprocess_graph_equals_the_family_denormalisation(name):
    family = FAMILIES[name]
    size = family.size
    tensors = np.random.default_rng(2).uniform(-2.5, 2.5, (1, 3, size, size)).astype(np.float32)
    graph = graphs.tensor_to_image((size, size), family.output_norm, np.float32, "tensor", "image")
    got = run(graph, {"tensor": tensors})[0].astype(int)
    values = tensors.transpose(0, 2, 3, 1).astype(np.float64)  # FaceFusion's normalize_crop_frame
    if family.denormalize:
        values = values * np.array(family.std) + np.array(family.mean)
    pixels = values.clip(0, 1)[..., ::-1] * 255
    assert np.abs(got - pixels).max() <= 0.5 + 1e-3  # our graph rounds: within half a level


@pytest.mark.parametrize("template", sorted(FACEFUSION_TEMPLATES))
def test_templates_are_facefusions(template):
    assert np.abs(TEMPLATES[template] - np.array(FACEFUSION_TEMPLATES[template])).max() < 1e-7


@pytest.mark.parametrize("name", list(FAMILIES))
def test_alignment_lands_the_landmarks_on_the_family_template(name):
    family = FAMILIES[name]
    rng = np.random.default_rng(len(name))
    for template, size in ((family.template, family.size), (family.source_template, family.source_size)):
        if template is None:
            continue
        target = TEMPLATES[template] * size
        angle, scale, shift = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 3), rng.uniform(0, 900, 2)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        landmarks = (target @ rotation.T + shift).astype(np.float32)  # the face somewhere in a frame
        matrix = estimate_matrix(landmarks, template, size)
        landed = cv2.transform(landmarks[None], matrix)[0]
        assert np.abs(landed - target).max() <= 0.5


def test_gpen_256_aligns_on_arcface_128_and_larger_gpens_on_ffhq():
    assert get_family("enhancer", "gpen_bfr_256").template == "arcface_128"
    assert get_family("enhancer", "gpen_bfr_256").size == 256
    for size in (512, 1024, 2048):
        family = get_family("enhancer", f"gpen_bfr_{size}")
        assert (family.template, family.size) == ("ffhq_512", size)


def _refusal(tmp_path, role: str, model: onnx.ModelProto, **families) -> str:
    source = tmp_path / f"{role}.onnx"
    onnx.save(model, str(source))
    models = {role: source}
    if families.get("converter") is not None:
        models["converter"] = families.pop("converter")
    with pytest.raises(PreparationError) as caught:
        prepare_repository(models, tmp_path / "repo", Options(verify_batch=2, **families))
    return str(caught.value)


REFUSALS = [  # role, the twin's family, the family declared, what the refusal says
    (
        "swapper", "inswapper", "hyperswap",
        "swapper: family hyperswap: tensor 'target': expected the target crop float[?,3,256,256], "
        "got float32[1,3,128,128]",
    ),
    (
        "swapper", "hyperswap", "uniface",
        "swapper: family uniface: tensor 'source': expected the aligned source crop float[?,3,256,256], "
        "got float32[1,512]",
    ),
    (
        "enhancer", "gfpgan", "codeformer",
        "enhancer: family codeformer: tensor 'weight': expected the fidelity weight float[?], "
        "got no such tensor (input float32[1,3,512,512])",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("role", "twin", "declared", "expected"), REFUSALS)
def test_a_file_of_another_interface_is_refused_naming_role_family_tensor_expectation(
    tmp_path, role, twin, declared, expected
):
    build = family_twins.swapper if role == "swapper" else family_twins.enhancer
    message = _refusal(tmp_path, role, build(FAMILIES[twin]), **{f"{role}_family": declared})
    assert message.startswith(expected)


def test_a_swapper_without_emap_declared_inswapper_is_refused(tmp_path):
    twin = family_twins.swapper(FAMILIES["hyperswap"])
    message = _refusal(tmp_path, "swapper", twin, swapper_family="inswapper")
    assert message.startswith(
        "swapper: family inswapper: tensor 'tint_shape': expected the emap [512,512] as"
    )


def test_a_converter_family_without_its_converter_is_refused(tmp_path):
    message = _refusal(tmp_path, "swapper", family_twins.swapper(FAMILIES["ghost"]), swapper_family="ghost")
    assert message == "swapper: family ghost needs its converter model (--converter PATH)"


def test_a_converter_of_the_wrong_shape_is_refused(tmp_path):
    converter = tmp_path / "converter.onnx"
    onnx.save(family_twins.swapper(FAMILIES["hyperswap"]), str(converter))
    twin = family_twins.swapper(FAMILIES["simswap"])
    message = _refusal(tmp_path, "swapper", twin, swapper_family="simswap", converter=converter)
    assert message.startswith("swapper: family simswap: tensor 'input': expected the converter's embedding")


def test_an_unknown_family_is_refused_on_the_command_line(tmp_path, capsys):
    code = modelplane_main(
        ["prepare", "--twins", "--repository", str(tmp_path / "r"), "--models-dir", str(tmp_path / "m"),
         "--enhancer-family", "gfpgan_9"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(
        "error: enhancer: unknown family 'gfpgan_9' (known: gfpgan, codeformer, gpen_bfr_256"
    )


def test_the_manifest_names_a_family_for_every_swapper_and_enhancer_and_their_converters():
    manifest = load_manifest()
    for entry in manifest.models.values():
        if entry.role in ("swapper", "enhancer"):
            family = get_family(entry.role, entry.family)
            if family.source in ("converter", "converter_unit"):
                assert manifest.models[entry.converter].role == "converter"
    served = {manifest.models[name].family for name in manifest.models if manifest.models[name].family}
    assert served == set(FAMILIES)


def test_a_manifest_swapper_of_an_unknown_family_is_refused(tmp_path):
    text = (load_manifest.__globals__["DEFAULT_MANIFEST"]).read_text()
    broken = tmp_path / "models.toml"
    broken.write_text(text.replace('family = "hyperswap"', 'family = "hyperswap_9"', 1))
    with pytest.raises(
        ManifestError, match="model 'hyperswap_1a_256': swapper: unknown family 'hyperswap_9'"
    ):
        load_manifest(broken)


def test_an_own_converter_family_file_is_prepared_with_its_converter(tmp_path, capsys):
    files = family_twins.write_family_twin(tmp_path / "own", "swapper", "ghost")
    arguments = [
        "prepare",
        "--twins",
        "--repository",
        str(tmp_path / "repo"),
        "--models-dir",
        str(tmp_path / "m"),
    ]
    assert modelplane_main([*arguments, "--swapper-family", "ghost"]) == 0  # the twin and its converter twin
    capsys.readouterr()
    own = ["prepare", "--repository", str(tmp_path / "own_repo"), "--models-dir", str(tmp_path / "m2")]
    own += ["--detector", str(SCRFD), "--recognizer", str(tmp_path / "m" / "twins" / "recognizer_twin.onnx")]
    own += [
        "--enhancer",
        str(tmp_path / "m" / "twins" / "gfpgan_twin.onnx"),
        "--swapper",
        str(files["swapper"]),
    ]
    assert modelplane_main([*own, "--swapper-family", "ghost"]) == 1
    assert capsys.readouterr().err.startswith("error: swapper: family ghost needs its converter model")
    assert modelplane_main([*own, "--swapper-family", "ghost", "--converter", str(files["converter"])]) == 0
    steps = (tmp_path / "own_repo" / "swap_latent" / "config.pbtxt").read_text()
    assert 'model_name: "swap_converter"' in steps and 'model_name: "swap_source"' in steps
    # the same file served beside the default swapper: its converter at its position of the list
    default = str(tmp_path / "m" / "twins" / "ghost_twin.onnx")
    beside = [*own[:-1], f"{default},{files['swapper']}", "--swapper-family", "ghost,ghost"]
    assert modelplane_main([*beside, "--converter", f"{files['converter']},{files['converter']}"]) == 0
    steps = (tmp_path / "own_repo" / "swap_latent__ghost_twin" / "config.pbtxt").read_text()
    assert 'model_name: "swap_converter__ghost_twin"' in steps
