"""A mistake in a config, spec or override is found from the configs alone, before torch, Ray or
MLflow are imported; `tipslab --help` likewise. The test asserts what was imported and prints the
times beside `import torch` in the same interpreter (speed is measured, not asserted)."""

import json
import subprocess
import sys
import time

import pytest
from conftest import REPO

PROBE = r"""
import json, sys, time
start = time.perf_counter()
from tipslab.orchestrator.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exit_:
    code = exit_.code
heavy = sorted(m for m in ("torch", "torchvision", "ray", "mlflow", "pyarrow", "timm") if m in sys.modules)
print(json.dumps({"code": code, "seconds": time.perf_counter() - start, "heavy": heavy}))
"""

MISTAKES = {
    "train, unknown key": ["train", "ablations/base/tips_tiny.yaml", "model.sizee=3"],
    "sweep, bad value in a spec's row": ["sweep", "ablations/smoke.yaml", "--smoke", "model.size=huge"],
    "plan, negative loss weight": ["plan", "ablations/tips_losses.yaml", "loss.mim_weight=-1"],
    "config, zero steps": ["config", "ablations/tips_losses.yaml", "--size", "mini", "train.steps=0"],
    "sweep, unknown metric in a spec": ["sweep", "ablations/smoke.yaml", "--smoke", "eval.probes=[knn]"],
    # A paper-size run needs its SentencePiece tokenizer (orchestrator/launch.py), which a plan may lack.
    "sweep, paper size without its tokenizer": ["sweep", "ablations/tips_losses.yaml"],
    "sweep, paper size with the hash tokenizer": ["sweep", "ablations/tips_losses.yaml", "model.tokenizer=hash"],
    "train, B/14 without its tokenizer": ["train", "ablations/base/tips_b14.yaml"],
}


def run(argv: list[str], home, cwd=REPO) -> dict:
    env = {"TIPSLAB_HOME": str(home), "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    wall = time.perf_counter() - start
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "stderr": out.stderr, "wall": wall}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_config_mistake_is_rejected_before_anything_heavy_is_imported(name, tmp_path):
    result = run(MISTAKES[name], tmp_path)
    assert result["code"] == 2 and result["stderr"].count("\n") == 1 and "tipslab: error:" in result["stderr"]
    assert result["heavy"] == [], f"{name}: imported {result['heavy']} before rejecting the config"


def test_help_imports_nothing_heavy_and_the_times_beside_import_torch(tmp_path):
    result = run(["--help"], tmp_path)
    assert result["code"] == 0 and result["heavy"] == []
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_s = time.perf_counter() - start
    rejection = run(MISTAKES["train, unknown key"], tmp_path)["wall"]
    print(
        f"\nwhole processes: `python -c 'import torch'` {torch_s:.2f} s; `tipslab --help` {result['wall']:.2f} s "
        f"({result['wall'] / torch_s:.2f}x); a rejected config {rejection:.2f} s ({rejection / torch_s:.2f}x)"
    )


@pytest.mark.parametrize(
    "name, says",
    [
        (
            "sweep, paper size without its tokenizer",
            "tipslab: error: {repo}/ablations/tips_losses.yaml: variant 'clip': model.tokenizer: no SentencePiece "
            "model at {cwd}/data/webli/tokenizer.model: make it once from the training shards' captions with "
            "`tipslab data tokenizer {cwd}/data/webli/train {cwd}/data/webli/tokenizer.model` "
            "(or copy the official tokenizer.model there)",
        ),
        (
            "sweep, paper size with the hash tokenizer",
            "tipslab: error: {repo}/ablations/tips_losses.yaml: variant 'clip': model.tokenizer: 'hash' is for the CPU "
            "sizes (tiny, small-cpu), not model.size B, which trains with the paper's 32k SentencePiece vocabulary: "
            "make one with `tipslab data tokenizer {cwd}/data/webli/train {cwd}/data/webli/tokenizer.model` and set "
            "model.tokenizer to it (or to the official tokenizer.model)",
        ),
        (
            "train, B/14 without its tokenizer",
            "tipslab: error: {repo}/ablations/base/tips_b14.yaml: variant 'tips_b14': model.tokenizer: no "
            "SentencePiece model at {home}/data/scenes/tokenizer.model: make it once from the training shards' "
            "captions with "
            "`tipslab data tokenizer {home}/data/scenes/train {home}/data/scenes/tokenizer.model` "
            "(or copy the official tokenizer.model there)",
        ),
    ],
)
def test_a_paper_size_run_without_its_tokenizer_stops_before_ray_naming_the_key_and_the_command(name, says, tmp_path):
    """The spec's shards and evaluation datasets are there (relative to the working folder, as the
    spec names them), only the tokenizer is not."""
    cwd = tmp_path / "work"
    for split in ("train", "probe_train", "probe_test"):
        (cwd / "data/webli" / split).mkdir(parents=True)
        (cwd / "data/webli" / split / "manifest.json").write_text("{}")
    for dataset in ("flickr30k", "pascal_voc", "nyuv2", "imagenet"):
        (cwd / "data/eval" / dataset).mkdir(parents=True)
    argv = [MISTAKES[name][0], str(REPO / MISTAKES[name][1]), *MISTAKES[name][2:]]
    result = run(argv, tmp_path, cwd=cwd)
    assert result["code"] == 2 and result["heavy"] == []
    assert result["stderr"].strip() == says.format(repo=REPO, home=tmp_path, cwd=cwd)
