"""`tipslab data scenes` in-process: options reach the generator, --json is stable, s3:// works."""

import json

from tipslab.jobs.data.shards.format import read_manifest, verify_shards
from tipslab.orchestrator.cli import main


def test_scenes_to_s3_with_options_and_json(s3, capsys):
    out = f"{s3}/scenes/probe_test"
    assert (
        main(
            [
                "data",
                "scenes",
                out,
                "--n",
                "3",
                "--size",
                "32",
                "--split",
                "probe_test",
                "--seed",
                "5",
                "--web-noise",
                "1",
                "--max-objects",
                "2",
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    manifest = verify_shards(out)
    assert printed == {
        "content_hash": manifest["content_hash"],
        "num_rows": 3,
        "out": out,
        "schema_version": 2,
        "shards": 1,
        "source": "scenes:probe_test:seed=5:size=32:web_noise=1.0:max_objects=2",
    }
    assert read_manifest(out)["source"].endswith("web_noise=1.0:max_objects=2")


def test_out_of_range_options_exit_2(tmp_path, capsys):
    for flag, value in (("--web-noise", "1.5"), ("--max-objects", "0"), ("--n", "-1"), ("--size", "8")):
        assert main(["data", "scenes", str(tmp_path / "x"), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"tipslab: error: {flag}: ")
    assert not (tmp_path / "x").exists()
