"""checkpoint import/export, embed, data tokenizer and bench step, through the real command line."""

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED
from PIL import Image

from tipslab.jobs.data.scenes.generate import generate_scenes
from tipslab.jobs.eval.embed import read_image
from tipslab.models.checkpoint import load_student
from tipslab.models.tokenizer import load_sentencepiece
from tipslab.orchestrator.cli import main
from tipslab.orchestrator.config import ConfigError, load_experiment, to_dict
from tipslab.orchestrator.launch import check_tokenizer

FIXTURE = SHARED / "fixtures" / "official_tips"


@pytest.fixture
def official(tmp_path):
    if not FIXTURE.is_dir():
        pytest.skip(f"official TIPS fixture not found at {FIXTURE}")
    out = tmp_path / "imported"
    assert (
        main(
            [
                "checkpoint",
                "import",
                "--vision",
                str(FIXTURE / "tiny_vision.npz"),
                "--text",
                str(FIXTURE / "tiny_text.npz"),
                "--tokenizer",
                "hash",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_import_then_export_gives_back_every_official_array(official, tmp_path):
    assert main(["checkpoint", "export", str(official), str(tmp_path / "ours")]) == 0
    for tower in ("vision", "text"):
        with np.load(FIXTURE / f"tiny_{tower}.npz") as want, np.load(tmp_path / f"ours_{tower}.npz") as got:
            assert sorted(got.files) == sorted(want.files)
            for name in want.files:
                np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


def test_embed_writes_both_cls_tokens_patches_and_text(official, tmp_path, capsys):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "emb.npz"
    assert (
        main(
            [
                "embed",
                str(official),
                *map(str, paths),
                "--text",
                "a red circle",
                "--text",
                "two squares",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    arrays = np.load(out)
    student, tokenizer, config = load_student(official)
    size = config["model"]["image_size"]
    assert arrays["cls_web"].shape == (2, 64) and arrays["patch_tokens"].shape == (2, (size // 14) ** 2, 64)
    with torch.no_grad():
        want = student.vision(torch.stack([read_image(str(p), size) for p in paths]))
        text = student.encode_text(torch.from_numpy(tokenizer.encode(["a red circle", "two squares"])))
    np.testing.assert_allclose(arrays["cls_synthetic"], want["cls_synthetic"].numpy(), atol=1e-5)
    np.testing.assert_allclose(arrays["text"], text.numpy(), atol=1e-5)
    assert main(["embed", str(official), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "missing.png: cannot read the image" in capsys.readouterr().err


def test_import_of_missing_files_is_a_user_error(tmp_path, capsys):
    assert (
        main(
            [
                "checkpoint",
                "import",
                "--vision",
                "nope.npz",
                "--text",
                "nope.npz",
                "--tokenizer",
                "hash",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "nope.npz: no such file" in capsys.readouterr().err


def test_data_tokenizer_trains_on_the_shards_and_configs_accept_it(tmp_path, home):
    shards = tmp_path / "shards"
    generate_scenes(str(shards), 60, split="train", size=56)
    model = tmp_path / "tok" / "tokenizer.model"
    assert main(["data", "tokenizer", str(shards), str(model), "--vocab-size", "120"]) == 0
    tokenizer = load_sentencepiece(model, 16)
    ids = tokenizer.encode(["A Large RED circle on the left"])
    assert ids.shape == (1, 16) and (ids[0, :3] > 0).all() and ids[0, -1] == 0
    base = REPO / "ablations" / "base" / "tips_tiny.yaml"
    cfg = to_dict(load_experiment(base, [f"model.tokenizer={model}", "model.vocab_size=120"]))
    assert cfg["model"]["tokenizer"] == str(model)
    check_tokenizer(cfg, "run")  # a run may start with it, at any size
    check_tokenizer({**cfg, "model": {**cfg["model"], "size": "B"}}, "run")
    # A config may name a tokenizer not made yet (a plan comes before the data); a run may not start.
    absent = to_dict(load_experiment(base, [f"model.tokenizer={tmp_path / 'absent.model'}"]))
    with pytest.raises(ConfigError, match=r"^run: model.tokenizer: no SentencePiece model at .*absent\.model: make"):
        check_tokenizer(absent, "run")
    small = to_dict(load_experiment(base, [f"model.tokenizer={model}", "model.vocab_size=50"]))
    with pytest.raises(ConfigError, match=r"pieces but model.vocab_size is 50"):
        check_tokenizer(small, "run")
