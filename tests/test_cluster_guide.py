"""docs/cluster.md, checked two ways.

`make test`: every `tipslab` command in the guide's marked blocks (the one submitted through Ray Jobs
included) is accepted by the CLI's parser as written, and the sweep's spec loads with the guide's
overrides: a flag renamed or an override the spec rejects breaks the guide here, in seconds.

`make soak` runs the guide: every command block marked `<!-- guide-test: STEP -->` runs as written, in
order, on a few images this test makes (a WebDataset tar, a CSV table, a COCO caption file, a tiny
random captioner, tiny evaluation folders, a random tiny checkpoint), with the guide's variables
($RAW, $DATA, $EVAL, $CAPTIONER, $CHECKPOINT) pointing at them; each step must exit 0 and leave its
output. One local Ray instance serves every step that uses Ray (RAY_ADDRESS). What each step does is
also tested on its own in `make test` (the ingest formats, captioning, tags, the tokenizer, evaluation
on the standard datasets' layouts, plan, table and report).

The one step marked `<!-- guide-skip: ... -->`, the sweep submitted through Ray Jobs, is
tests/infra/test_ray_job.py's (a smoke sweep by `ray job submit` on a local two-node cluster, read
back from MLflow); here the runs that sweep would leave are written with the sweep driver's own
tracker (orchestrator/tracking.py SweepTracker), so that the table and report steps read a sweep of
the guide's spec.
"""

import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, jpeg
from PIL import Image

GUIDE = REPO / "docs" / "cluster.md"
BLOCK = re.compile(r"<!-- guide-(test|skip): ([\w-]+)[^>]*-->\n```bash\n(.*?)```", re.S)
STEPS = [
    "ingest-webdataset",
    "ingest-csv",
    "ingest-coco",
    "caption",
    "tags",
    "tokenizer",
    "eval-datasets",
    "plan",
    "sweep",
    "table",
]
WORDS = "a red blue green cube sphere cone on the table beside small large metal shiny".split()


def guide_blocks(text: str) -> list[tuple[str, str, str]]:
    """(test|skip, step, commands) of every marked block, in the guide's order."""
    return BLOCK.findall(text)


def caption(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, 6))


def rgb(path: Path, seed: int = 0, size=(30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_raw(raw: Path, n: int = 12) -> None:
    """An img2dataset tar, a CSV table of image files and a COCO caption file, n images each."""
    (raw / "cc3m").mkdir(parents=True)
    with tarfile.open(raw / "cc3m" / "00000.tar", "w") as tar:
        for i in range(n):
            for ext, data in (
                ("jpg", jpeg(40 + i, 32)),
                ("txt", caption(i).encode()),
                ("json", json.dumps({"caption": caption(i), "url": f"http://x/{i}"}).encode()),
            ):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    lines = ["image,caption"]
    for i in range(n):
        rgb(raw / "images" / f"{i}.jpg", seed=i)
        lines.append(f"images/{i}.jpg,{caption(100 + i)}")
    (raw / "pairs.csv").write_text("\n".join(lines) + "\n")
    images, annotations = [], []
    for i in range(n):
        rgb(raw / "coco" / "train2017" / f"{i:012d}.jpg", seed=200 + i)
        images.append({"id": i, "file_name": f"{i:012d}.jpg", "width": 30, "height": 20})
        annotations += [{"id": 10 * i + j, "image_id": i, "caption": caption(300 + 10 * i + j)} for j in range(2)]
    (raw / "coco" / "annotations").mkdir(parents=True)
    (raw / "coco" / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": images, "annotations": annotations})
    )


def make_eval(root: Path) -> None:
    """Each standard dataset in the layout docs/cluster.md gives, two or three images per split, no
    two alike (the evaluation refuses probe-test images inside probe-train)."""
    seeds = iter(range(1000, 2000))
    for split, n in (("train", 2), ("val", 1)):
        for c in ("n01440764", "n01443537"):
            for i in range(n):
                rgb(root / "imagenet" / split / c / f"{i}.JPEG", seed=next(seeds))
    (root / "imagenet" / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    for name, folder in (("coco", "val2014"), ("flickr30k", "flickr30k-images")):
        entries = []
        for i in range(3):
            rgb(root / name / folder / f"{i}.jpg", seed=next(seeds))
            entry = {"filename": f"{i}.jpg", "split": "test", "imgid": i, "sentences": [{"raw": caption(i)}] * 2}
            entries.append({**entry, "filepath": folder} if name == "coco" else entry)
        (root / name / f"dataset_{name}.json").write_text(json.dumps({"images": entries}))
    ids = np.zeros((20, 30), np.uint8)
    ids[:, 15:] = 15
    ids[0] = 255
    voc = root / "pascal_voc"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k in names:
            rgb(voc / "JPEGImages" / f"{k}.jpg", seed=next(seeds))
            img = Image.fromarray(ids, mode="P")
            img.putpalette([v for i in range(256) for v in (i, 0, 255 - i)])
            img.save(voc / "SegmentationClass" / f"{k}.png")
    for split in ("training", "validation"):
        (root / "ade20k" / "annotations" / split).mkdir(parents=True)
        for k in (f"ADE_{split}_1", f"ADE_{split}_2"):
            rgb(root / "ade20k" / "images" / split / f"{k}.jpg", seed=next(seeds))
            ade = np.where(ids == 255, 0, ids + 1).astype(np.uint8)  # 1..150, 0 = other
            Image.fromarray(ade, mode="L").save(root / "ade20k" / "annotations" / split / f"{k}.png")
    mm = np.full((20, 30), 2500, np.uint16)
    mm[0] = 0
    for split in ("train", "test"):
        (root / "nyuv2" / split / "depth").mkdir(parents=True)
        for k in ("0001", "0002"):
            rgb(root / "nyuv2" / split / "rgb" / f"{k}.jpg", seed=next(seeds))
            img = Image.new("I;16", (30, 20))
            img.frombytes(mm.astype("<u2").tobytes(), "raw", "I;16")
            img.save(root / "nyuv2" / split / "depth" / f"{k}.png")


def save_tiny_captioner(path: Path) -> None:
    """tests/jobs/data/enrichment/test_caption.py's random VisionEncoderDecoder, reused, with room for
    the 40 new tokens `tipslab data caption` generates by default."""
    where = REPO / "tests" / "jobs" / "data" / "enrichment" / "test_caption.py"
    spec = importlib.util.spec_from_file_location("guide_test_caption", where)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_tiny_captioner(path, positions=64)


def save_tiny_checkpoint(folder: Path) -> None:
    """A random tiny TIPS student with its config: what the demo's checkpoints hold, untrained."""
    import torch

    from tipslab.models.checkpoint import save_checkpoint, tips_config
    from tipslab.models.tips import TIPSStudent
    from tipslab.models.tokenizer import build_tokenizer
    from tipslab.orchestrator.config import load_experiment, to_dict

    exp = to_dict(
        load_experiment(
            str(REPO / "ablations" / "base" / "tips_tiny.yaml"),
            # The dense probes score label maps at the model's image size (dense_label_size=0), not the
            # standard 512 px: ADE20k's 150 classes at 512 x 512 took most of the evaluation step's probe time.
            [
                "model.image_size=28",
                "eval.batch_size=8",
                "eval.seg_probe_epochs=2",
                "eval.depth_probe_epochs=2",
                "eval.dense_label_size=0",
            ],
        )
    )
    torch.manual_seed(0)
    model = TIPSStudent(tips_config(exp))
    save_checkpoint(
        folder, {"student": model.state_dict(), "config": exp, "tokenizer": build_tokenizer(exp["model"]).state()}
    )


def write_sweep_runs(env: dict) -> None:
    """What the skipped Ray Jobs sweep leaves in MLflow, written by the sweep driver's tracker: a
    parent run and one finished run per trial with eval metrics (made-up values) and loss curves."""
    from tipslab.orchestrator.runtime import tracking_uri
    from tipslab.orchestrator.spec import load_spec
    from tipslab.orchestrator.tracking import SweepTracker

    overrides = [f"data.root={env['DATA']}", f"model.tokenizer={env['DATA']}/tokenizer.model"]
    plan = load_spec(REPO / "ablations" / "tips_losses.yaml", overrides=overrides)
    tracker = SweepTracker(tracking_uri(), plan)
    for i, trial in enumerate(plan.trials):
        tracker.start_trial(trial)
        for step in (10, 20):
            tracker.log_metrics(trial.name, {"train/loss": 9.0 - step / 10 - i}, step)
        evals = {m["key"]: 50.0 + i for m in plan.spec["metrics"]}
        tracker.log_metrics(trial.name, evals, 20)
        tracker.finish_trial(trial.name, "FINISHED", evals)
    tracker.finish("FINISHED")


def test_the_guide_marks_each_step_once_and_only_the_sweep_is_skipped():
    blocks = guide_blocks(GUIDE.read_text())
    assert [step for _, step, _ in blocks] == STEPS
    assert [step for kind, step, _ in blocks if kind == "skip"] == ["sweep"]
    assert "tests/infra/test_ray_job.py" in GUIDE.read_text().split("guide-skip: sweep")[1].split("-->")[0]
    assert "docs/cluster.md" in (REPO / "README.md").read_text()


def test_the_block_reader_can_fail():
    text = "<!-- guide-test: a -->\n```bash\nx\n```\n<!-- guide-test: b -->\n```\ny\n```\n"
    assert guide_blocks(text) == [("test", "a", "x\n")]  # a block that is not ```bash is not run


def guide_commands(text: str) -> list[tuple[str, list[str]]]:
    """(step, its arguments after `tipslab`) of every `tipslab` command in the marked blocks, with
    those that `ray job submit ... --` runs; continuation lines joined, comments and redirections
    dropped."""
    commands = []
    for _, step, block in guide_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "--" in words and words[:3] == ["ray", "job", "submit"]:
                words = words[words.index("--") + 1 :]
            if words[:1] == ["tipslab"]:
                commands.append((step, [w for w in words[1 : words.index(">") if ">" in words else None]]))
    return commands


def test_every_tipslab_command_of_the_guide_parses_and_the_sweeps_overrides_load(monkeypatch, s3):
    # s3: the guide's bucket is asked of the loopback S3 server, which has no such bucket, at once
    from tipslab.orchestrator.cli import parse
    from tipslab.orchestrator.spec import load_spec

    for name in ("RAW", "DATA", "EVAL", "CAPTIONER", "CHECKPOINT"):
        monkeypatch.setenv(name, f"/guide/{name.lower()}")

    def expand(word: str) -> str:  # bash's ${NAME:-default}, then $NAME
        return os.path.expandvars(re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m[1], m[2]), word))

    commands = [(step, [expand(a) for a in argv]) for step, argv in guide_commands(GUIDE.read_text())]
    assert [step for step, _ in commands].count("table") == 3 and len(commands) == 13, commands
    assert "$" not in str(commands)
    for step, argv in commands:
        try:
            args = parse(argv)
        except SystemExit:
            pytest.fail(f"guide step {step}: tipslab {' '.join(argv)} is not a valid command line")
        assert args.command == argv[0] and callable(args.func)
    [(_, sweep)] = [c for c in commands if c[0] == "sweep"]
    args = parse(sweep)
    plan = load_spec(REPO / args.spec, overrides=args.overrides)
    assert len(plan.trials) == 6 and all(t.config["data"]["root"] == "s3://your-bucket/cc3m" for t in plan.trials)


def test_the_command_reader_can_fail():
    text = "<!-- guide-test: a -->\n```bash\ntipslab x --y \\\n  z > out # note\nray job submit -- tipslab w\n```\n"
    assert guide_commands(text) == [("a", ["x", "--y", "z"]), ("a", ["w"])]
    from tipslab.orchestrator.cli import parse

    with pytest.raises(SystemExit):
        parse(["data", "ingest", "--no-such-flag"])


def run_step(step: str, commands: str, env: dict, cwd: Path) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"step {step} exited {done.returncode}:\n{commands}\n{output[-4000:]}"
    return output


def manifest(folder: str) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


@pytest.mark.soak
def test_every_step_of_the_guide_runs_on_small_data(ray_session, tmp_path, monkeypatch):
    import ray

    env = {
        "RAW": str(tmp_path / "raw"),
        "DATA": str(tmp_path / "data" / "cc3m"),
        "EVAL": str(tmp_path / "eval"),
        "CAPTIONER": str(tmp_path / "captioner"),
        "CHECKPOINT": str(tmp_path / "checkpoint"),
        "VOCAB_SIZE": "40",
        "TIPSLAB_HOME": str(tmp_path / "home"),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,  # one Ray for every step that uses it
    }
    make_raw(tmp_path / "raw")
    make_eval(tmp_path / "eval")
    save_tiny_captioner(tmp_path / "captioner")
    save_tiny_checkpoint(tmp_path / "checkpoint")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # The guide's commands run from the root of a checkout: its specs, and nothing written into the repository.
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    (cwd / "ablations").symlink_to(REPO / "ablations")
    train = Path(env["DATA"]) / "train"

    ran = []
    for kind, step, commands in guide_blocks(GUIDE.read_text()):
        if kind == "skip":
            assert step == "sweep"
            write_sweep_runs(env)
            continue
        start = time.perf_counter()
        output = run_step(step, commands, env, cwd)
        ran.append(step)
        print(f"guide step {step}: {time.perf_counter() - start:.1f} s")
        if step.startswith("ingest-"):  # each source in turn replaces $DATA/train with its 12 rows
            m = manifest(train)
            assert m["num_rows"] == 12, output
            assert step.removeprefix("ingest-") in json.dumps(m["source"]).lower(), m["source"]
        elif step == "caption":
            assert "captioned 12 of 12 rows" in output
        elif step == "tags":
            vocab = (Path(env["DATA"]) / "tag_vocab.txt").read_text().split()
            assert vocab and set(vocab) <= set(WORDS), vocab
        elif step == "tokenizer":
            assert (Path(env["DATA"]) / "tokenizer.model").stat().st_size > 0
            assert "12" in output  # data check's row count
        elif step == "eval-datasets":
            for name in ("imagenet", "coco", "flickr30k", "pascal_voc", "ade20k", "nyuv2"):
                assert f"eval/{name}/" in output, (name, output[-3000:])
        elif step == "plan":
            assert "6 trial(s)" in output and "clip+distill+mim" in output and "| model.tokenizer " in output
        elif step == "table":
            assert "clip+distill+mim" in output and "Flickr I→T" in output
            assert (cwd / "table.tex").read_text().count("\\\\") >= 3
            assert (cwd / "report" / "index.html").is_file()
    assert ran == [s for s in STEPS if s != "sweep"]
