"""Overrides anywhere on the command line, the command line beating the spec, `tipslab config`,
`--version`: in-process through the CLI's own entry point."""

import json

import pytest
import yaml
from conftest import REPO

from tipslab.orchestrator.cli import main, parse

LOSSES = str(REPO / "ablations" / "tips_losses.yaml")


def test_overrides_may_stand_before_between_or_after_the_options():
    for argv in (
        ["sweep", LOSSES, "--smoke", "train.steps=20", "loss.mim_weight=0.5"],
        ["sweep", LOSSES, "train.steps=20", "--smoke", "loss.mim_weight=0.5"],
        ["sweep", "train.steps=20", LOSSES, "loss.mim_weight=0.5", "--size", "smoke"],
    ):
        args = parse(argv)
        assert (args.spec, args.size, args.overrides) == (LOSSES, "smoke", ["train.steps=20", "loss.mim_weight=0.5"])
    bench = parse(["bench", "step", "--sizes", "tiny", "S", "data.batch_size=4"])  # --sizes takes many values
    assert (bench.sizes, bench.overrides) == (["tiny", "S"], ["data.batch_size=4"])


def test_an_override_to_a_command_without_overrides_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["table", "smoke", "train.steps=3"])
    assert exit_.value.code == 2
    assert "train.steps=3: this command takes no key=value overrides" in capsys.readouterr().err


def resolved(capsys, *argv) -> dict:
    assert main(["config", LOSSES, *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_config_prints_a_trials_resolved_config_and_the_command_line_wins(home, capsys):
    clip = resolved(capsys, "--size", "mini")
    assert (clip["loss"]["distill_weight"], clip["train"]["seed"], clip["data"]["source"]) == (0, 0, "scenes")
    mim = resolved(capsys, "--variant", "clip+distill+mim", "--seed", "2", "--size", "mini")
    assert mim["loss"]["mim_weight"] > 0 and mim["train"]["seed"] == 2
    # The command line beats the spec's overrides, its variant and its resources.
    mine = resolved(capsys, "train.num_workers=3", "--size", "mini", "loss.distill_weight=0.7", "train.steps=11")
    assert (mine["train"]["num_workers"], mine["loss"]["distill_weight"], mine["train"]["steps"]) == (3, 0.7, 11)
    assert main(["config", LOSSES, "--size", "mini"]) == 0  # YAML by default, headed by what it is
    out = capsys.readouterr().out
    assert out.startswith(f"# {LOSSES}, size mini, variant clip, seed 0, config hash ")
    assert yaml.safe_load(out)["loss"]["distill_weight"] == 0


def test_config_of_a_missing_row_names_the_rows(home, capsys):
    assert main(["config", LOSSES, "--variant", "nope", "--size", "mini"]) == 2
    err = capsys.readouterr().err
    assert "no trial with variant 'nope'" in err and "clip+distill+mim" in err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("tipslab 0.")
