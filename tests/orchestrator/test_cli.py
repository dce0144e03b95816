"""The command line as a user meets it: a subprocess, its exit code and its one message."""
import subprocess
import sys

import pytest
from conftest import REPO


def tipslab(*args, env_home):
    env = {"TIPSLAB_HOME": str(env_home), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "tipslab.orchestrator.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)


@pytest.mark.parametrize("command", [[], ["data", "scenes"], ["train"], ["sweep"], ["table"], ["demo"]])
def test_every_command_has_help(command, tmp_path):
    result = tipslab(*command, "--help", env_home=tmp_path)
    assert result.returncode == 0 and "usage: tipslab" in result.stdout


def test_bad_spec_exits_2_with_one_message_before_ray(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nbase: {REPO}/ablations/base/tips_tiny.yaml\nvariants:\n  a: {{loss.mim_wieght: 0}}\n")
    result = tipslab("sweep", str(spec), env_home=tmp_path / "home")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tipslab: error: {spec}: variants.a: loss.mim_wieght: Key 'mim_wieght' not in 'LossConfig'. "
        "Did you mean one of: 'mim_weight', 'tag_weight'?"]
    assert not (tmp_path / "home").exists()  # nothing was started or written


def test_bad_override_and_missing_store_exit_2(tmp_path):
    result = tipslab("train", "ablations/base/tips_tiny.yaml", "train.steps=abc", env_home=tmp_path)
    assert result.returncode == 2 and "command line: train.steps" in result.stderr
    result = tipslab("table", "smoke", env_home=tmp_path / "home")
    assert result.returncode == 2 and "no MLflow store" in result.stderr


def test_data_scenes_writes_shards(tmp_path):
    out = tmp_path / "scenes"
    result = tipslab("data", "scenes", str(out), "--n", "5", "--split", "probe_test", env_home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote 5 scenes in 1 shards" in result.stdout and (out / "manifest.json").is_file()
    bad = tipslab("data", "scenes", str(out), "--split", "dev", env_home=tmp_path)
    assert bad.returncode == 2 and "--split: 'dev'" in bad.stderr
