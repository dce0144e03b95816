"""`tipslab data ingest|tags|check|caption` as a user meets them: exit codes, one-line errors, --json."""

import json

import numpy as np
import pytest

from tipslab.jobs.bench.ingest import photo_jpeg
from tipslab.jobs.data.ingest.sources import FORMATS
from tipslab.orchestrator import data_commands
from tipslab.orchestrator.cli import main


def table(tmp_path, n_bad: int = 1, n: int = 4):
    rng = np.random.default_rng(0)
    (tmp_path / "ok.jpg").write_bytes(photo_jpeg(rng, 24))
    (tmp_path / "bad.jpg").write_bytes(b"<html>not found</html>")
    lines = ["key,image,caption"] + [
        f"k{i},{'bad' if i < n_bad else 'ok'}.jpg,a red cube on a blue table" for i in range(n)
    ]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "t.csv")


def test_formats_listed_in_the_parser_are_ingests():
    assert data_commands.INGEST_FORMATS == FORMATS


def test_ingest_tags_check_round_trip(tmp_path, capsys):
    out = str(tmp_path / "shards")
    assert main(["data", "ingest", "--format", "csv", table(tmp_path), out, "--max-bad-fraction", "0.3", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["rows"] == 3 and result["bad_rows"]["counts"] == {"not_an_image": 1}
    err = captured.err.splitlines()
    assert err[0] == "skipped bad row 'k0': not_an_image (22 bytes of no known image format)"
    assert len(err) == 2 and err[1].startswith("ingesting csv: 4 rows in ")  # the progress summary (not a terminal)

    assert main(["data", "tags", out, "--min-freq", "1"]) == 0
    text = capsys.readouterr().out
    assert "100.0% have tags" in text and f"data.tag_vocab={out}/tag_vocab.txt" in text
    assert (tmp_path / "shards" / "tag_vocab.txt").read_text().splitlines() == ["blue", "cube", "red", "table"]

    assert main(["data", "check", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["rows"], report["bad_images"]["count"], report["duplicate_keys"]["count"]) == (3, 0, 0)
    assert report["tags"] == {
        "rows_with_tags": 1.0,
        "mean_per_row": 4.0,
        "distinct": 4,
        "vocab_file": f"{out}/tag_vocab.txt",
        "vocab_size": 4,
    }
    assert report["image_width"] == {"min": 24.0, "median": 24.0, "p95": 24.0, "max": 24.0}
    assert report["caption_words"]["web_caption"]["median"] == 7.0
    assert main(["data", "check", out, "--for-training"]) == 0  # fit: the flag changes nothing
    assert "3 rows in 1 shards" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--max-bad-fraction", "0.1"], "too many bad rows: 2 bad of 4 rows (not_an_image 2)"),
        (["--format", "coco"], "cannot read COCO caption file"),
        (["--parallel"], "--parallel: only --format webdataset"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    src = table(tmp_path, n_bad=2)
    argv = ["data", "ingest", "--format", "csv", src, str(tmp_path / "o")]
    if args[0] == "--format":
        argv[3] = args[1]
    else:
        argv += args
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("skipped")]
    assert len(err) == 1 and err[0].startswith("tipslab: error: ") and message in err[0]


def test_missing_inputs_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing")]) == 2
    assert "manifest" in capsys.readouterr().err
    assert main(["data", "caption", str(tmp_path), "--model", str(tmp_path / "no-model")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["data", "tags", str(tmp_path / "nothing")]) == 2
