"""The command line as a user meets it: a subprocess, its exit code and its one message."""

import json
import subprocess
import sys

from conftest import REPO


def tipslab(*args, env_home):
    env = {"TIPSLAB_HOME": str(env_home), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "tipslab.orchestrator.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )


HELP = r"""
import contextlib, io, json, sys
from tipslab.orchestrator.cli import main
out = {}
for command in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main([*command, "--help"])
            code = None
        except SystemExit as exit_:
            code = exit_.code
    out[" ".join(command)] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def test_every_command_has_help(tmp_path):
    """One fresh process for all of them (each would pay the imports again)."""
    commands = [
        [],
        ["data", "scenes"],
        ["data", "ingest"],
        ["data", "tags"],
        ["data", "caption"],
        ["data", "check"],
        ["train"],
        ["eval"],
        ["sweep"],
        ["table"],
        ["demo"],
        ["plan"],
        ["report"],
        ["ui"],
        ["bench", "step"],
        ["bench", "data"],
        ["bench", "trial"],
        ["checkpoint", "import"],
    ]
    helps = in_one_process(commands, tmp_path, script=HELP)
    for command in commands:
        code, text = helps[" ".join(command)]
        assert code == 0 and "usage: tipslab" in text, command


def test_bad_spec_exits_2_with_one_message_before_ray(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nbase: {REPO}/ablations/base/tips_tiny.yaml\nvariants:\n  a: {{loss.mim_wieght: 0}}\n")
    result = tipslab("sweep", str(spec), env_home=tmp_path / "home")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"tipslab: error: {spec}: variants.a: loss.mim_wieght: Key 'mim_wieght' not in 'LossConfig'. "
        "Did you mean one of: 'mim_weight', 'clip_weight', 'tag_weight'?"
    ]
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


def test_plan_json_is_stable_and_report_ui_need_a_store(tmp_path):
    home = tmp_path / "home"
    commands = [
        ["plan", "ablations/tips_losses.yaml", "--smoke", "--json"],
        ["plan", "ablations/tips_losses.yaml"],
        ["plan", "ablations/tips_losses.yaml", "--recipe"],
        ["report", "smoke", "--out", str(tmp_path / "r")],
        ["ui"],
    ]
    (code, out, err), short, card, *need_a_store = in_one_process(commands, home)
    assert code == 0, err
    summary = json.loads(out)
    assert list(summary) == ["spec", "size", "trials", "num_trials", "resources", "data", "warnings", "estimate"]
    assert (summary["spec"], summary["size"], summary["num_trials"]) == ("tips-losses", "smoke", 6)
    assert summary["estimate"]["gpu_hours"] is None and "no MLflow store" in summary["estimate"]["basis"][0]["note"]
    assert short[0] == 0 and "\nrecipe: " in short[1] and "## recipe" not in short[1]
    # a plan may be made before the data exist: the full size's shards are a warning, not an error
    assert f"WARNING: ablations/tips_losses.yaml: data.root: {REPO / 'data' / 'webli'}: no such folder" in short[1]
    assert "## recipe of tips-losses (full): 6 row(s)" in card[1] and "| loss.mim_weight" in card[1]
    for code, _, err in need_a_store:
        assert code == 2 and "no MLflow store" in err
    assert not home.exists()  # planning and failing to read wrote nothing


def in_one_process(commands: list[list[str]], home, script: str | None = None):
    """What `script` (MAIN: [exit code, stdout, stderr] of each `tipslab` command line, run by main()
    one after another) prints as JSON on its last line, run in one fresh process (the imports paid
    once) with TIPSLAB_HOME at `home`."""
    env = {"TIPSLAB_HOME": str(home), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script or MAIN, json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


MAIN = r"""
import contextlib, io, json, sys
from tipslab.orchestrator.cli import main
out = []
for command in json.loads(sys.argv[1]):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(command)
        except SystemExit as exit_:
            code = exit_.code
    out.append([code, stdout.getvalue(), stderr.getvalue()])
print(json.dumps(out))
"""


def test_sizes_on_the_command_line(tmp_path):
    """--size full|mini|smoke (and --smoke) on plan and sweep; a wrong size is one line naming the
    spec file and the key, exit 2, before Ray or the store is touched. One process for all."""
    home = tmp_path / "home"
    errors = [
        (
            ["sweep", "ablations/tips_losses.yaml", "--size", "medium"],
            "tipslab: error: ablations/tips_losses.yaml: size: 'medium' is not a size; sizes: full, mini, smoke",
        ),
        (
            ["sweep", "ablations/smoke.yaml", "--size", "mini"],
            "tipslab: error: ablations/smoke.yaml: mini: the spec has no `mini:` overlay, so it cannot run at size "
            "mini (its sizes: full, smoke)",
        ),
        (["plan", "ablations/smoke.yaml", "--size", "mini"], None),
        (
            ["table", "smoke", "--size", "medium"],
            "tipslab: error: --size: 'medium' is not a size; sizes: full, mini, smoke",
        ),
    ]
    commands = [
        ["plan", "ablations/tips_losses.yaml", "--size", "mini", "--json"],
        ["plan", "ablations/tips_losses.yaml", "--size", "mini", "--smoke"],
        *(c for c, _ in errors),
    ]
    (code, out, err), both, *failed = in_one_process(commands, home)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["spec"], summary["size"], summary["num_trials"]) == (
        "tips-losses",
        "mini",
        9,
    )  # the paper's rows: mini drops the rows of ours
    assert summary["resources"]["device_kind"] == "cpu" and summary["estimate"]["cpu_hours"] is None
    assert both[0] == 2 and "argument --smoke: not allowed with argument --size" in both[2]
    for (args, line), (code, _, err) in zip(errors, failed):
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and (line is None or lines == [line]), (args, err)
    assert not home.exists()  # nothing was started or written
