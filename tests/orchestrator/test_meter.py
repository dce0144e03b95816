"""Progress of scene rendering and ingestion: one line rewritten in place in a terminal (done/total,
rate, ETA) while the work runs, and a single summary line anywhere else."""

import io
import json
import os

import numpy as np
from terminal import in_a_terminal

from tipslab.jobs.bench.ingest import photo_jpeg
from tipslab.orchestrator.cli import main
from tipslab.orchestrator.meter import Meter, progress_line, split_meters, summary_line


class Screen(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_have_count_rate_and_eta():
    assert progress_line("rendering scenes train", "scenes", 40, 100, 2.0) == (
        "rendering scenes train: 40/100 scenes (40%)  20 scenes/s  ETA 3s"
    )
    assert progress_line("ingesting csv", "rows", 12, None, 4.0) == "ingesting csv: 12 rows  3.0 rows/s"
    assert progress_line("ingesting csv", "rows", 0, None, 0.0) == "ingesting csv: 0 rows"
    assert summary_line("ingesting coco", "rows", 3000, 125.0) == "ingesting coco: 3000 rows in 2m05s (24 rows/s)"


def test_in_a_terminal_the_line_is_redrawn_at_most_every_interval_and_ends_in_the_summary():
    screen, clock = Screen(tty=True), Clock()
    meter = Meter("rendering scenes train", "scenes", stream=screen, every=0.25, clock=clock)
    meter(0, 10)
    for done in range(1, 4):  # within the interval of the first draw: not drawn
        clock.now += 0.05
        meter(done, 10)
    clock.now += 0.2  # 0.35 s in
    meter(4, 10)
    meter.say("skipped bad row 'k5': not_an_image")  # its own line; the progress line is redrawn next
    clock.now += 0.01
    meter(5, 10)
    clock.now += 0.49
    meter(10, 10)  # the total: closes with the summary
    meter(10, 10)
    meter.close()
    frames = screen.getvalue().split("\r")
    at_4 = "rendering scenes train: 4/10 scenes (40%)  11 scenes/s  ETA 1s"  # 4 in 0.35 s
    at_5 = "rendering scenes train: 5/10 scenes (50%)  14 scenes/s  ETA 0s"
    summary = "rendering scenes train: 10 scenes in 1s (12 scenes/s)"  # 10 in 0.85 s
    assert frames == [
        "",
        "rendering scenes train: 0/10 scenes (0%)",
        at_4,
        " " * len(at_4),  # blanked for the line of its own
        "skipped bad row 'k5': not_an_image\n",
        at_5,
        summary + " " * (len(at_5) - len(summary)) + "\n",  # what is left of the longer line blanked
    ]


def test_elsewhere_only_the_summary_is_written_and_a_failure_writes_nothing():
    screen, clock = Screen(tty=False), Clock()
    with Meter("ingesting csv", "rows", stream=screen, clock=clock) as meter:
        for done in range(1, 1001):
            clock.now += 0.01
            meter(done, None)
    assert screen.getvalue() == "ingesting csv: 1000 rows in 10s (100 rows/s)\n"
    failed = Screen(tty=False)
    try:
        with Meter("ingesting csv", "rows", stream=failed) as meter:
            meter(5, None)
            raise ValueError("bad source")
    except ValueError:
        pass
    assert failed.getvalue() == ""
    # A command that may fail after its last row (ingestion's final bad-row check) keeps its meter
    # open at the total: the failure is still the one line.
    late = Screen(tty=False)
    try:
        with Meter("ingesting coco", "rows", stream=late, closes_at_total=False) as meter:
            meter(1, 1)
            raise ValueError("too many bad rows")
    except ValueError:
        pass
    assert late.getvalue() == ""
    cut = Screen(tty=True)  # in a terminal, the half-drawn line is ended so that the error starts a line
    try:
        with Meter("ingesting csv", "rows", stream=cut, clock=Clock()) as meter:
            meter(5, None)
            raise ValueError("bad source")
    except ValueError:
        pass
    assert cut.getvalue() == "\ringesting csv: 5 rows\n"


def test_one_meter_per_split():
    screen = Screen(tty=False)
    with split_meters("rendering scenes", "scenes", stream=screen) as on_progress:
        for split, n in (("train", 3), ("probe_train", 2)):
            for done in range(n + 1):
                on_progress(split, done, n)
    lines = screen.getvalue().splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "rendering scenes train: 3 scenes",
        "rendering scenes probe_train: 2 scenes",
    ]


# --------------------------------------------------------------------------- the commands


def coco_source(folder, n: int) -> str:
    """A COCO caption file of `n` images (one JPEG file named by every entry), two captions each."""
    folder.mkdir()
    (folder / "img.jpg").write_bytes(photo_jpeg(np.random.default_rng(0), 64))
    images = [{"id": i, "file_name": "img.jpg"} for i in range(n)]
    annotations = [
        {"id": 2 * i + j, "image_id": i, "caption": f"a red cube number {i}"} for i in range(n) for j in (0, 1)
    ]
    (folder / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return str(folder / "captions.json")


def csv_source(folder, n: int, bad: int = 0) -> str:
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(photo_jpeg(np.random.default_rng(0), 32))
    (folder / "bad.jpg").write_bytes(b"<html>not found</html>")
    rows = [f"k{i},{'bad' if i < bad else 'ok'}.jpg,a red cube on a blue table" for i in range(n)]
    (folder / "t.csv").write_text("key,image,caption\n" + "\n".join(rows) + "\n")
    return str(folder / "t.csv")


def progress_while_running(arrived, what: str, total: int, unit: str) -> list[str]:
    """The lines `WHAT: DONE/TOTAL UNIT (P%)  RATE UNIT/s  ETA T` with DONE < TOTAL that arrived
    before the command had written its last file."""
    lines = []
    for _, line, finished in arrived:
        head, _, rest = line.partition(": ")
        done, slash, tail = rest.partition("/")
        if head == what and slash and tail.startswith(f"{total} {unit} (") and not finished:
            if int(done) < total and f" {unit}/s  ETA " in tail:
                lines.append(line)
    return lines


def command_env(tmp_path) -> dict:
    """As a user runs it: no PYTHONUNBUFFERED."""
    env = {**os.environ, "TIPSLAB_HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def test_data_scenes_shows_scenes_done_rate_and_eta_in_a_terminal_while_it_renders(tmp_path):
    out = tmp_path / "scenes"
    args = ["data", "scenes", str(out), "--n", "200", "--size", "32"]
    code, arrived = in_a_terminal(args, command_env(tmp_path), probe=(out / "manifest.json").exists)
    text = "\n".join(line for _, line, _ in arrived)
    assert code == 0, text
    # while it rendered (the manifest, written last, not there yet), not only at the end
    assert progress_while_running(arrived, "rendering scenes train", 200, "scenes"), text
    assert text.splitlines()[-2].startswith("rendering scenes train: 200 scenes in ")
    assert text.splitlines()[-1].startswith("wrote 200 scenes in 1 shards")


def test_data_ingest_shows_rows_done_rate_and_eta_in_a_terminal_while_it_ingests(tmp_path):
    src, out = coco_source(tmp_path / "coco", 600), tmp_path / "shards"
    args = ["data", "ingest", "--format", "coco", src, str(out)]
    code, arrived = in_a_terminal(args, command_env(tmp_path), probe=(out / "manifest.json").exists)
    text = "\n".join(line for _, line, _ in arrived)
    assert code == 0, text
    assert progress_while_running(arrived, "ingesting coco", 600, "rows"), text
    assert text.splitlines()[-2].startswith("ingesting coco: 600 rows in ")
    assert text.splitlines()[-1].startswith("wrote 600 rows in 3 shards")


def test_elsewhere_ingest_and_scenes_write_one_summary_line(tmp_path, capsys):
    src = csv_source(tmp_path / "csv", 40, bad=2)
    assert main(["data", "ingest", "--format", "csv", src, str(tmp_path / "o"), "--max-bad-fraction", "0.1"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err
    err = captured.err.splitlines()
    assert err[:2] == [f"skipped bad row 'k{i}': not_an_image (22 bytes of no known image format)" for i in (0, 1)]
    assert len(err) == 3 and err[2].startswith("ingesting csv: 40 rows in ") and err[2].endswith(" rows/s)"), err
    assert captured.out.startswith("wrote 38 rows in 1 shards")

    assert main(["data", "scenes", str(tmp_path / "s"), "--n", "5", "--size", "32"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("rendering scenes train: 5 scenes in ") and "scenes/s" in err[0], err
