"""Official checkpoint interop: names, shapes, inferred config, and parity with the official code's outputs.

The fixture (../shared/fixtures/official_tips) holds tiny towers in the official layout and what the
official PyTorch code computed from them; its manifest lists every official name and shape per size.
"""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import SHARED

from tipslab.models.checkpoint import load_state, load_student
from tipslab.models.config import SIZES, ModelConfig
from tipslab.models.errors import DataError
from tipslab.models.official import (
    OFFICIAL_SIZES,
    export_checkpoint,
    export_official,
    import_checkpoint,
    import_official,
    infer_model_fields,
    official_state,
)
from tipslab.models.text import TextTower
from tipslab.models.tokenizer import HashTokenizer
from tipslab.models.vision import VisionTower

FIXTURE = SHARED / "fixtures" / "official_tips"
TOWERS = {"vision": "tiny_vision.npz", "vision_swiglu": "tiny_vision_swiglu.npz"}
TOLERANCE = 1e-5  # the fixture README: a correct import reproduces the outputs to about 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fixture_dir():
    if not (FIXTURE / "manifest.json").is_file():
        pytest.skip(f"official TIPS fixture not found at {FIXTURE}")
    return FIXTURE


@pytest.fixture(scope="module")
def inputs(fixture_dir):
    with np.load(fixture_dir / "inputs.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def outputs(fixture_dir):
    with np.load(fixture_dir / "outputs.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def manifest(fixture_dir):
    return json.loads((fixture_dir / "manifest.json").read_text())


def npz(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def imported_towers(fixture_dir, tower: str) -> tuple[VisionTower, TextTower, dict]:
    vision, text, fields = import_official(fixture_dir / TOWERS[tower], fixture_dir / "tiny_text.npz")
    cfg = ModelConfig(**fields)
    v, t = VisionTower(cfg).eval(), TextTower(cfg).eval()
    v.load_state_dict(vision)  # strict: every name maps, nothing is left over
    t.load_state_dict(text)
    return v, t, fields


@pytest.mark.parametrize("tower", sorted(TOWERS))
@pytest.mark.parametrize("px", [224, 448])
def test_imported_image_tower_reproduces_the_official_outputs(fixture_dir, inputs, outputs, tower, px):
    vision, _, _ = imported_towers(fixture_dir, tower)
    with torch.no_grad():
        out = vision(torch.from_numpy(inputs[f"images_{px}"]))
    assert out["patch_tokens"].shape[1] == (px // 14) ** 2
    for ours, theirs in (("cls_web", "cls1"), ("cls_synthetic", "cls2"), ("patch_tokens", "patch")):
        err = np.abs(out[ours].numpy() - outputs[f"{tower}_{px}_{theirs}"]).max()
        assert err < TOLERANCE, (ours, err)


def test_448_parity_depends_on_the_official_interpolation(fixture_dir, inputs, outputs):
    """The 448 px check is not vacuous: a bicubic resize of the 16x16 grid misses the outputs."""
    vision, _, _ = imported_towers(fixture_dir, "vision")
    vision.pos_interpolation = "bicubic"
    with torch.no_grad():
        out = vision(torch.from_numpy(inputs["images_448"]))
    assert np.abs(out["patch_tokens"].numpy() - outputs["vision_448_patch"]).max() > 100 * TOLERANCE


def test_imported_text_tower_reproduces_the_official_embedding_and_temperature(fixture_dir, inputs, outputs):
    _, text, _ = imported_towers(fixture_dir, "vision")
    ids = torch.from_numpy(inputs["text_ids"])
    assert torch.equal(ids == 0, torch.from_numpy(inputs["text_paddings"]).bool())  # our padding rule is theirs
    with torch.no_grad():
        emb = text(ids)
    assert np.abs(emb.numpy() - outputs["text_embedding"]).max() < TOLERANCE
    official_temperature = float(npz(fixture_dir / "tiny_text.npz")["temperature"])
    assert text.temperature.item() == pytest.approx(official_temperature, rel=1e-6)


@pytest.mark.parametrize("tower,mlp", [("vision", "gelu"), ("vision_swiglu", "swiglu")])
def test_inferred_fields_for_the_tiny_fixture(fixture_dir, tower, mlp):
    _, _, fields = import_official(fixture_dir / TOWERS[tower], fixture_dir / "tiny_text.npz")
    assert fields == {
        "size": "tiny",
        "width": 64,
        "depth": 2,
        "heads": 2,
        "mlp_dim": 256,
        "mlp": mlp,
        "text_depth": 2,
        "patch_size": 14,
        "image_size": 224,
        "vocab_size": 1000,
        "layerscale_init": 1.0,
    }
    assert ModelConfig(**fields).dims() == (64, 2, 2, 256, 2)


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_export_writes_back_the_official_files(fixture_dir, tmp_path, tower):
    vision, text, _ = imported_towers(fixture_dir, tower)
    paths = export_official(torch.nn.ModuleDict({"vision": vision, "text": text}), tmp_path / "out" / "tiny")
    assert [p.name for p in paths] == ["tiny_vision.npz", "tiny_text.npz"] and all(p.is_file() for p in paths)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["tiny_text.npz", "tiny_vision.npz"]  # no temporaries
    for written, original in zip(paths, (fixture_dir / TOWERS[tower], fixture_dir / "tiny_text.npz")):
        a, b = npz(written), npz(original)
        assert set(a) == set(b)
        for k in b:
            assert a[k].shape == b[k].shape and a[k].dtype == np.float32, k
            if k == "temperature":  # through our log and back
                np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
            else:
                assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("size", OFFICIAL_SIZES)
def test_every_official_name_and_shape_for_each_size(manifest, size):
    """Built on the meta device (no memory); the export mapping gives exactly the manifest."""
    cfg = ModelConfig(size=size, vocab_size=32000, image_size=224)
    with torch.device("meta"):
        vision, text = VisionTower(cfg), TextTower(cfg)
    ov, ot = official_state(vision.state_dict(), text.state_dict())
    assert {k: list(v.shape) for k, v in ov.items()} == manifest["vision"][size]
    assert {k: list(v.shape) for k, v in ot.items()} == manifest["text"][size]


@pytest.mark.parametrize("size", OFFICIAL_SIZES)
def test_fields_inferred_from_each_official_size(manifest, size):
    def shapes(names):
        return {k: SimpleNamespace(shape=tuple(v)) for k, v in names.items()}

    fields = infer_model_fields(shapes(manifest["vision"][size]), shapes(manifest["text"][size]))
    width, depth, heads, mlp_dim = SIZES[size]
    assert fields["size"] == size
    assert (fields["width"], fields["depth"], fields["heads"], fields["mlp_dim"]) == (width, depth, heads, mlp_dim)
    assert fields["mlp"] == ("swiglu" if size == "g" else "gelu")
    assert fields["text_depth"] == (27 if size == "So400m" else 12)
    assert (fields["image_size"], fields["patch_size"], fields["vocab_size"]) == (224, 14, 32000)
    # the inferred config builds what the named size builds
    assert ModelConfig(**fields).dims() == ModelConfig(size=size).dims()


def test_heads_can_be_given_and_an_unknown_width_needs_them(fixture_dir):
    vision, text = npz(fixture_dir / "tiny_vision.npz"), npz(fixture_dir / "tiny_text.npz")
    assert infer_model_fields(vision, text, heads=4)["heads"] == 4
    narrow_v = {
        k: SimpleNamespace(shape=(*v.shape[:-1], 80) if k == "cls_token" else v.shape) for k, v in vision.items()
    }
    narrow_t = {
        k: SimpleNamespace(shape=(1000, 80) if k == "token_embedding.weight" else v.shape) for k, v in text.items()
    }
    with pytest.raises(ValueError, match="pass the number of heads"):
        infer_model_fields(narrow_v, narrow_t)
    assert infer_model_fields(narrow_v, narrow_t, heads=5)["heads"] == 5


def test_mismatched_towers_are_refused_with_a_reason(fixture_dir):
    vision, text = npz(fixture_dir / "tiny_vision.npz"), npz(fixture_dir / "tiny_text.npz")
    text = {**text, "transformer.resblocks.0.mlp.c_fc.weight": np.zeros((128, 64), np.float32)}
    with pytest.raises(ValueError, match="mlp_dim"):
        infer_model_fields(vision, text)
    with pytest.raises(ValueError, match="token_embedding"):
        infer_model_fields(vision, {"temperature": np.float32(0.01)})
    with pytest.raises(FileNotFoundError, match="nowhere_vision.npz"):
        import_official(fixture_dir / "nowhere_vision.npz", fixture_dir / "tiny_text.npz")


def test_import_checkpoint_then_load_student_gives_the_official_outputs(fixture_dir, inputs, outputs, tmp_path):
    from tipslab.orchestrator.config import schema, to_dict

    base = to_dict(schema())
    base["model"].update(head_hidden=32, head_bottleneck=16, head_prototypes=32)
    tokenizer = HashTokenizer(1000, 64).state()
    path = import_checkpoint(
        fixture_dir / TOWERS["vision_swiglu"],
        fixture_dir / "tiny_text.npz",
        tmp_path / "ckpt",
        base_config=base,
        tokenizer_state=tokenizer,
    )
    assert path.is_file()
    student, loaded_tokenizer, config = load_student(tmp_path / "ckpt")
    assert loaded_tokenizer.state() == tokenizer
    assert config["model"]["mlp"] == "swiglu" and config["model"]["width"] == 64
    assert config["model"]["head_prototypes"] == 32 and config["loss"] == base["loss"]  # the rest is the base
    state = load_state(tmp_path / "ckpt")
    assert state["step"] == 0 and state["optimizer"] is None
    with torch.no_grad():
        out = student.vision(torch.from_numpy(inputs["images_224"]))
        emb = student.encode_text(torch.from_numpy(inputs["text_ids"]))
    assert np.abs(out["cls_web"].numpy() - outputs["vision_swiglu_224_cls1"]).max() < TOLERANCE
    assert np.abs(emb.numpy() - outputs["text_embedding"]).max() < TOLERANCE

    # and back out: the official files again, the objective's heads left behind
    paths = export_checkpoint(tmp_path / "ckpt", tmp_path / "again")
    for written, original in zip(paths, (fixture_dir / TOWERS["vision_swiglu"], fixture_dir / "tiny_text.npz")):
        a, b = npz(written), npz(original)
        assert set(a) == set(b)
        for k in b:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=0, err_msg=k)
    assert math.isclose(float(npz(paths[1])["temperature"]), 0.01, rel_tol=1e-6)


def test_import_checkpoint_refuses_names_the_layout_does_not_explain(fixture_dir, tmp_path):
    from tipslab.orchestrator.config import schema, to_dict

    vision = npz(fixture_dir / "tiny_vision.npz")
    vision["blocks.0.extra.weight"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "odd_vision.npz", **vision)
    odd = r"odd_vision.npz: array\(s\) 'blocks.0.extra.weight' not in the official layout"
    with pytest.raises(DataError, match=odd):
        import_checkpoint(
            tmp_path / "odd_vision.npz", fixture_dir / "tiny_text.npz", tmp_path / "ckpt", base_config=to_dict(schema())
        )
    assert not (tmp_path / "ckpt").exists()


def test_an_npz_whose_header_declares_more_than_it_holds_is_refused_unread(tmp_path):
    import sys
    import time

    from conftest import REPO

    from tipslab.models.errors import DataError
    from tipslab.models.official import read_npz

    sys.path.insert(0, str(REPO / "tests"))
    from fuzz_inputs import npz_bomb

    bomb = npz_bomb(tmp_path / "bomb.npz")  # 381 GiB declared in a few hundred bytes
    assert bomb.stat().st_size < 1000
    start = time.process_time()
    with pytest.raises(DataError, match=r"bomb.npz: array 'cls_token.npy' declares \(102400000000,\) of float32 "):
        read_npz(bomb)
    assert time.process_time() - start < 1
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DataError, match=r"bad.npz: not a readable .npz"):
        read_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "ok.npz", a=np.arange(6, dtype=np.float32).reshape(2, 3))
    assert read_npz(tmp_path / "ok.npz")["a"].tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.fixture
def towers(tmp_path):
    """A tiny student's towers in the official layout (3 blocks each): (vision arrays, text arrays)."""
    cfg = ModelConfig(size="tiny", depth=3, vocab_size=100, image_size=28)
    torch.manual_seed(0)
    vision, text = export_official(
        torch.nn.ModuleDict({"vision": VisionTower(cfg), "text": TextTower(cfg)}), tmp_path / "good"
    )
    return npz(vision), npz(text)


def import_edited(tmp_path, vision: dict, text: dict):
    np.savez(tmp_path / "t_vision.npz", **vision)
    np.savez(tmp_path / "t_text.npz", **text)
    return import_official(tmp_path / "t_vision.npz", tmp_path / "t_text.npz")


def without(arrays: dict, prefix: str) -> dict:
    return {k: v for k, v in arrays.items() if not k.startswith(prefix)}


def test_the_untouched_tiny_towers_import_with_their_depth(tmp_path, towers):
    _, _, fields = import_edited(tmp_path, *towers)
    assert (fields["depth"], fields["text_depth"], fields["width"]) == (3, 3, 64)


def test_non_finite_weights_are_refused_naming_the_file_and_array(tmp_path, towers):
    vision, text = towers
    qkv = np.full_like(vision["blocks.1.attn.qkv.weight"], np.nan)  # all NaN: 192 x 64
    with pytest.raises(DataError, match=r"t_vision.npz: array 'blocks.1.attn.qkv.weight' holds 12288 non-finite "):
        import_edited(tmp_path, {**vision, "blocks.1.attn.qkv.weight": qkv}, text)
    emb = text["token_embedding.weight"].copy()
    emb[7, 3] = np.inf
    with pytest.raises(DataError, match=r"t_text.npz: array 'token_embedding.weight' holds 1 non-finite .* of 6400:"):
        import_edited(tmp_path, vision, {**text, "token_embedding.weight": emb})
    with pytest.raises(DataError, match=r"t_text.npz: array 'temperature' holds 1 non-finite"):
        import_edited(tmp_path, vision, {**text, "temperature": np.float32(np.nan)})
    with pytest.raises(DataError, match=r"t_text.npz: array 'temperature' holds <U4, not numbers"):
        import_edited(tmp_path, vision, {**text, "temperature": np.array("warm")})


def test_a_block_missing_in_the_middle_is_refused_not_imported_shallower(tmp_path, towers):
    vision, text = towers
    gap = r"t_vision.npz: block\(s\) blocks.1 missing from blocks 0..2 \(the file holds 2\)"
    with pytest.raises(DataError, match=gap):
        import_edited(tmp_path, without(vision, "blocks.1."), text)
    short = without(text, "transformer.resblocks.0.")
    with pytest.raises(DataError, match=r"t_text.npz: block\(s\) transformer.resblocks.0 missing from blocks 0..2"):
        import_edited(tmp_path, vision, short)
    with pytest.raises(DataError, match=r"t_vision.npz: no blocks.0. arrays"):
        import_edited(tmp_path, without(vision, "blocks."), text)


def test_a_block_short_of_its_mlp_or_attention_is_refused_naming_the_arrays(tmp_path, towers):
    vision, text = towers
    with pytest.raises(
        DataError,
        match=r"t_vision.npz: missing array\(s\) 'blocks.2.mlp.fc1.bias', 'blocks.2.mlp.fc1.weight', "
        r"'blocks.2.mlp.fc2.bias', 'blocks.2.mlp.fc2.weight' \(a gelu vision tower of width 64 with 3 blocks holds",
    ):
        import_edited(tmp_path, without(vision, "blocks.2.mlp."), text)
    attn = r"t_text.npz: missing array\(s\) 'transformer.resblocks.1.attn.in_proj_bias', "
    with pytest.raises(DataError, match=attn):
        import_edited(tmp_path, vision, without(text, "transformer.resblocks.1.attn."))


def test_a_tower_missing_a_top_level_array_is_refused_naming_it(tmp_path, towers):
    vision, text = towers
    with pytest.raises(DataError, match=r"t_vision.npz: missing array\(s\) 'norm.bias', 'norm.weight' \("):
        import_edited(tmp_path, without(vision, "norm."), text)
    with pytest.raises(DataError, match=r"t_vision.npz: no 'pos_embed', 'patch_embed.proj.weight': not an official"):
        import_edited(tmp_path, without(without(vision, "pos_embed"), "patch_embed.proj.weight"), text)
    with pytest.raises(DataError, match=r"t_vision.npz: missing array\(s\) 'register_tokens' "):
        import_edited(tmp_path, without(vision, "register_tokens"), text)
    with pytest.raises(DataError, match=r"t_text.npz: missing array\(s\) 'temperature' \(a text tower of width 64"):
        import_edited(tmp_path, vision, without(text, "temperature"))
    with pytest.raises(DataError, match=r"t_text.npz: missing array\(s\) 'ln_final.bias', 'ln_final.weight' "):
        import_edited(tmp_path, vision, without(text, "ln_final"))


def test_a_shape_the_inferred_model_does_not_have_is_refused(tmp_path, towers):
    vision, text = towers
    bias = np.zeros(65, np.float32)
    with pytest.raises(DataError, match=r"t_vision.npz: array 'norm.bias' has shape \(65,\); .* needs \(64,\)"):
        import_edited(tmp_path, {**vision, "norm.bias": bias}, text)


def test_the_import_command_refuses_in_one_line_and_writes_nothing(tmp_path, towers, capsys):
    from tipslab.orchestrator.cli import main

    vision, text = towers
    np.savez(tmp_path / "t_vision.npz", **without(vision, "blocks.1."))
    np.savez(tmp_path / "t_text.npz", **text)
    argv = ["checkpoint", "import", "--vision", str(tmp_path / "t_vision.npz"), "--text", str(tmp_path / "t_text.npz")]
    assert main([*argv, "--tokenizer", "hash", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tipslab: error: ") and "t_vision.npz: block(s) blocks.1 missing" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "ckpt").exists()
