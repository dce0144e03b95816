"""The fuzz test's bad inputs, made deterministically (seeded) under one folder.

Each case is a `tipslab` command line that must fail with exit code 2 and one line naming the file,
key or row at fault (`names`: any of them will do). Families: a bad value for every numeric config
key (as an override and in a config file), malformed overrides, specs (size bounds, YAML alias
bombs, nesting), shard sets, ingest sources (paths outside the source folder, deep nesting,
unhashable ids, broken CSV), checkpoints, and a sweep id with a quote. Only the standard library,
PIL, pyarrow and torch make the inputs: the same catalogue runs against any version of tipslab.
"""

import dataclasses
import hashlib
import io
import json
import random
import typing
from pathlib import Path

SEED = 20
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Case:
    family: str
    argv: list[str]
    names: tuple[str, ...]  # the error line must name one of these


# Keys whose 0 is as wrong as a negative value; keys that are fractions (1.5 is out of range).
POSITIVE = {
    "model": "patch_size image_size vocab_size max_text_len init_temperature head_hidden head_bottleneck "
    "distill_prototypes mim_prototypes tag_layers tag_heads",
    "loss": "student_temp teacher_temp",
    "data": "scenes_train scenes_probe batch_size local_crop_size cpus max_image_pixels",
    "train": "steps log_every num_workers teacher_temp_end checkpoints_to_keep probe_images",
    "eval": "knn_k knn_temperature seg_probe_epochs seg_probe_lr depth_probe_epochs depth_probe_lr depth_bins "
    "batch_size",
}
FRACTIONS = {"loss.mask_ratio", "loss.center_momentum", "loss.tag_clip", "data.max_bad_fraction"}
FRACTIONS |= {"train.teacher_momentum", "train.teacher_momentum_end"}
# The issue's own examples, always in the catalogue.
NAMED = [
    ("model.patch_size", "0"),
    ("model.image_size", "0"),
    ("data.cpus", "-1"),
    ("train.lr", ".nan"),
    ("train.steps", str(10**12)),
    ("train.max_failures", "-1"),
    ("train.checkpoints_to_keep", "0"),
    ("train.max_failures", str(10**6)),
]


def numeric_keys() -> dict[str, type]:
    """Every int or float key of the experiment's sections: dotted key -> type."""
    from tipslab.jobs.config import DataConfig, EvalConfig, TrainConfig
    from tipslab.models.config import LossConfig, ModelConfig

    out = {}
    for section, cls in (
        ("model", ModelConfig),
        ("loss", LossConfig),
        ("data", DataConfig),
        ("train", TrainConfig),
        ("eval", EvalConfig),
    ):
        for name, hint in typing.get_type_hints(cls).items():
            if hint in (int, float):
                out[f"{section}.{name}"] = hint
    return out


def bad_values(key: str, kind: type) -> list[str]:
    """YAML spellings of values out of the key's range."""
    section, name = key.split(".")
    values = ["-1" if kind is int else "-0.5"]
    if kind is float:
        values += [".nan", ".inf", "-.inf"]
    else:
        values.append(str(10**13))
    if name in POSITIVE[section].split():
        values.append("0")
    if key in FRACTIONS:
        values.append("1.5")
    return values


def png(size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def spec_text(name: str = "fuzz", base: str = "base.yaml", **extra) -> str:
    spec = {"name": name, "base": base, "variants": {"a": {}}, "seeds": [0], **extra}
    return json.dumps(spec)  # JSON is YAML


def config_cases(rng: random.Random, inp: Path) -> list[Case]:
    write(inp / "base.yaml", (REPO / "ablations" / "base" / "tips_tiny.yaml").read_text())
    write(inp / "spec.yaml", spec_text())
    cases = []
    for key, kind in numeric_keys().items():  # a bad value for every key, as an override
        value = rng.choice(bad_values(key, kind))
        cases.append(Case("config value", ["config", "spec.yaml", f"{key}={value}"], (key,)))
    for key, value in NAMED:
        cases.append(Case("config value", ["config", "spec.yaml", f"{key}={value}"], (key,)))
    keys = sorted(numeric_keys().items())
    for i, (key, kind) in enumerate(rng.sample(keys, 12)):  # in a config file, run with `tipslab train`
        section, name = key.split(".")
        value = rng.choice(bad_values(key, kind))
        write(inp / f"config{i}.yaml", f"{section}:\n  {name}: {value}\n")
        cases.append(Case("config file", ["train", f"config{i}.yaml"], (f"config{i}.yaml: {key}", key)))
    return cases


OVERRIDES = [
    ("eval.probes=[a,", "eval.probes"),
    ("model.size={", "model.size"),
    ("train.steps='", "train.steps"),
    ("train.lr=&a [*a]", "train.lr"),  # an alias that contains itself
    ("train.lr=!!python/object/apply:os.system [echo]", "train.lr"),
    ("train.steps=[1, 2]", "train.steps"),
    ("train.steps={a: 1}", "train.steps"),
    ("data.global_crop_scale=[0.9, 0.1]", "data.global_crop_scale"),
    ("data.global_crop_scale=[0.5]", "data.global_crop_scale"),
    ("data.local_crop_scale=[.nan, 0.5]", "data.local_crop_scale"),
    ("train.run_name=${nope}", "train.run_name"),
    ("train.run_name=${oc.env:TIPSLAB_FUZZ_UNSET}", "train.run_name"),
    ("train.stages=[{name: a, steps: 0}]", "train.stages"),
    ("train.stages=[{name: a, steps: 1000000000000}]", "train.stages"),
    ("train.stages=[{name: a, steps: 100000000}, {name: b, steps: 100000000}]", "train.stages"),
    ("model.nonexistent=1", "model.nonexistent"),
    ("data.source=shardz", "data.source"),
    ("eval.datasets={imagenet: [1]}", "eval.datasets"),
    ("eval.probes=[knn, telepathy]", "eval.probes"),
    ("model.size=[tiny]", "model.size"),
    ("train.lr=1.0e+400", "train.lr"),
    ("data.tag_vocab=/nonexistent/vocab.txt", "data.tag_vocab"),
]


def override_cases(inp: Path) -> list[Case]:
    deep = "train.lr=" + "[" * 5000 + "]" * 5000
    out = [Case("override", ["config", "spec.yaml", item], (key,)) for item, key in OVERRIDES]
    # `config` and `plan` accept a tokenizer that is not made yet (a plan may come before the data);
    # a sweep refuses it before Ray starts (orchestrator/launch.py).
    missing_tokenizer = ["sweep", "spec.yaml", "model.tokenizer=/nonexistent/tokenizer.model"]
    return [
        *out,
        Case("override", ["config", "spec.yaml", deep], ("train.lr",)),
        Case("override", missing_tokenizer, ("model.tokenizer",)),
    ]


def alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\nname: bomb\nbase: base.yaml\nvariants: {{a: {{}}}}\ntitle: *a{levels - 1}\n"


def spec_cases(inp: Path) -> list[Case]:
    specs = {
        "bomb.yaml": (alias_bomb(), ("bomb.yaml",)),
        "bomb_base.yaml": (spec_text(base="bomb_config.yaml"), ("bomb_config.yaml",)),
        "self_alias.yaml": ("name: s\nbase: base.yaml\nvariants: &v {a: *v}\n", ("self_alias.yaml",)),
        "nested.yaml": ("name: n\nbase: base.yaml\ntitle: " + "[" * 20000 + "]" * 20000 + "\n", ("nested.yaml",)),
        "axes.yaml": (spec_text(variants={}, axes={f"train.seed{i}": list(range(10)) for i in range(4)}), ("axes",)),
        "axes_huge.yaml": (
            spec_text(  # 10**6 rows, each valid on its own
                variants={},
                axes={
                    "train.lr": [0.001 * (i + 1) for i in range(100)],
                    "train.warmup_steps": list(range(100)),
                    "loss.mim_weight": [i / 10 for i in range(100)],
                },
            ),
            ("axes",),
        ),
        "seeds.yaml": (spec_text(seeds=list(range(2000))), ("seeds",)),
        "variants.yaml": (spec_text(variants={f"v{i}": {} for i in range(1500)}), ("variants",)),
        "rows_seeds.yaml": (spec_text(variants={f"v{i}": {} for i in range(100)}, seeds=list(range(20))), ("seeds",)),
        "neg_seed.yaml": (spec_text(seeds=[-1]), ("seeds",)),
        "huge_seed.yaml": (spec_text(seeds=[2**40]), ("seeds",)),
        "samples.yaml": (
            spec_text(
                search={
                    "algorithm": "random",
                    "metric": "eval/scenes/i2t_r1",
                    "mode": "max",
                    "num_samples": 2000000000,
                    "space": {"loss.mim_weight": {"uniform": [0, 1]}},
                }
            ),
            ("search.num_samples",),
        ),
        "samples_neg.yaml": (
            spec_text(
                search={
                    "algorithm": "tpe",
                    "metric": "eval/scenes/i2t_r1",
                    "mode": "max",
                    "num_samples": -5,
                    "space": {"loss.mim_weight": {"uniform": [0, 1]}},
                }
            ),
            ("search.num_samples",),
        ),
        "grid.yaml": (
            spec_text(
                search={
                    "algorithm": "grid",
                    "metric": "eval/scenes/i2t_r1",
                    "mode": "max",
                    "space": {"loss.mim_weight": list(range(40)), "loss.distill_weight": list(range(40))},
                }
            ),
            ("search.space",),
        ),
        "variant_scalar.yaml": (spec_text(variants={"a": 3}), ("variants.a",)),
        "no_base.yaml": (spec_text(base="missing.yaml"), ("missing.yaml",)),
        "base_dir.yaml": (spec_text(base="."), ("base", "fuzz", str(inp))),
        "garbage.yaml": (b"\xff\xfe\x00\x01 not yaml \x9c", ("garbage.yaml",)),
        "list.yaml": ("- 1\n- 2\n", ("list.yaml",)),
        "tabs.yaml": ("name: t\n\tbase: base.yaml\n", ("tabs.yaml",)),
        "env.yaml": (spec_text(overrides={"train.run_name": "${oc.env:TIPSLAB_FUZZ_UNSET}"}), ("train.run_name",)),
        "reference.yaml": (spec_text(reference={"a": {"eval/scenes/i2t_r1": "high"}}), ("reference.a",)),
        "metric.yaml": (spec_text(metrics=[{"key": "eval/scenes/telepathy"}]), ("metrics[0]",)),
        "overlay.yaml": (spec_text(smoke={"name": "other"}), ("smoke.name",)),
        "workers.yaml": (spec_text(resources={"workers_per_trial": -1}), ("workers_per_trial", "num_workers")),
        "concurrent.yaml": (spec_text(resources={"max_concurrent_trials": -3}), ("max_concurrent_trials",)),
        "gpus.yaml": (spec_text(resources={"gpus_per_worker": -1}), ("gpus_per_worker",)),
        "big.yaml": (spec_text() + "\n" + "#" * (2 << 20) + "\n", ("big.yaml",)),  # valid but for its size
    }
    write(inp / "bomb_config.yaml", alias_bomb().replace("title:", "model: {size: tiny}\nextra:"))
    cases = []
    for name, (text, names) in specs.items():
        write(inp / name, text)
        cases.append(Case("spec", ["config", name], names))
    for name in ("axes_huge.yaml", "samples.yaml"):  # plan must refuse at once, not run out of memory
        cases.append(Case("spec", ["plan", name], specs[name][1]))
    write(inp / "shards_spec.yaml", spec_text(overrides={"data.source": "shards", "data.root": "no/such/shards"}))
    cases.append(Case("spec", ["sweep", "shards_spec.yaml"], ("data.root",)))
    write(inp / "shards_config.yaml", "data: {source: shards, root: no/such/shards}\n")
    cases.append(Case("spec", ["train", "shards_config.yaml"], ("data.root",)))
    cases.append(Case("spec", ["sweep", "spec.yaml", "eval.datasets={imagenet: no/such/folder}"], ("eval.datasets",)))
    return cases


def parquet(rows: list[dict], schema=None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue().to_pybytes()


def shard_set(folder: Path, data: bytes, manifest: dict | None = None) -> None:
    digest = hashlib.sha256(data).hexdigest()
    write(folder / "shard-00000.parquet", data)
    entry = {"file": "shard-00000.parquet", "num_rows": 1, "sha256": digest}
    doc = {"schema_version": 1, "source": "fuzz", "num_rows": 1, "shards": [entry]}
    doc["content_hash"] = hashlib.sha256(digest.encode()).hexdigest()
    write(folder / "manifest.json", json.dumps({**doc, **(manifest or {})}))


def shard_cases(inp: Path) -> list[Case]:
    good = {"key": "k0", "image": png(), "web_caption": "a red square", "synthetic_caption": None}
    good |= {"tags": [], "width": 16, "height": 16}
    root = inp / "shards"
    # A row's bad value (a NULL key, text for an image) is a bad row that `data check` counts; a
    # column missing from the whole set, or a file that is not Parquet, is an error.
    made = {
        "no_image": parquet([{k: v for k, v in good.items() if k != "image"}]),
        "no_key": parquet([{k: v for k, v in good.items() if k != "key"}]),
        "garbage": b"PAR1 this is not parquet PAR1",
        "no_width": parquet([{k: v for k, v in good.items() if k != "width"}]),
    }
    cases = []
    for name, data in made.items():
        shard_set(root / name, data)
        cases.append(Case("shards", ["data", "check", f"{root / name}"], (name, "shard-00000", "manifest")))
    manifests = {
        "not_json": b"{not json",
        "a_list": b"[1, 2]",
        "deep": b"[" * 100000 + b"]" * 100000,
        "missing_keys": b'{"schema_version": 1}',
        "escape": json.dumps(
            {"schema_version": 1, "source": "x", "num_rows": 1, "content_hash": "0", "shards": []}
        ).encode(),
    }
    for name, data in manifests.items():
        write(root / name / "manifest.json", data)
        cases.append(Case("shards", ["data", "check", f"{root / name}"], (name,)))
    cases.append(Case("shards", ["data", "check", f"{root / 'absent'}"], ("absent",)))
    # Shards that `data check` passes but a run cannot read: refused by train and sweep before Ray.
    for split in ("train", "probe_train", "probe_test"):
        drop = {"train": "web_caption", "probe_test": "image"}.get(split)
        shard_set(root / "lacking" / split, parquet([{k: v for k, v in good.items() if k != drop}]))
    write(inp / "lacking.yaml", f"data: {{source: shards, root: {root / 'lacking'}}}\n")
    cases.append(Case("shards", ["train", "lacking.yaml"], ("'web_caption'",)))
    write(inp / "lacking_spec.yaml", spec_text(overrides={"data.source": "shards", "data.root": str(root / "lacking")}))
    cases.append(Case("shards", ["sweep", "lacking_spec.yaml"], ("'web_caption'",)))
    argv = ["sweep", "lacking_spec.yaml", "data.train_split=probe_train"]  # only probe_test lacks a column
    cases.append(Case("shards", argv, ("'image'",)))
    return cases


def ingest_cases(inp: Path, out: str) -> list[Case]:
    src, outside = inp / "src", inp / "outside"
    write(outside / "private.png", png())
    write(src / "ok.png", png())
    absolute = str(outside / "private.png")
    tables = {
        "up.csv": "key,image,caption\nx,../outside/private.png,a red square\n",
        "abs.csv": f"key,image,caption\nx,{absolute},a red square\n",
        "up.tsv": "key\timage\tcaption\nx\t../outside/private.png\ta red square\n",
        "up.jsonl": json.dumps({"key": "x", "image": "../outside/private.png", "caption": "a red square"}) + "\n",
        "abs.jsonl": json.dumps({"key": "x", "image": absolute, "caption": "a red square"}) + "\n",
        "deep.jsonl": "[" * 100000 + "]" * 100000 + "\n",
        "wide.csv": "key,image,caption\nx,ok.png," + "w" * 200000 + "\n",
        "latin1.csv": "key,image,caption\nx,ok.png,caf\xe9\n".encode("latin-1"),
        "no_image.csv": "key,caption\nx,a red square\n",
    }
    cases = []
    for name, text in tables.items():
        write(src / name, text)
        fmt = name.rsplit(".", 1)[1]
        names = (name, "'x'") if name != "no_image.csv" else ("image",)
        cases.append(Case("ingest", ["data", "ingest", "--format", fmt, str(src / name), f"{out}/{name}"], names))
    coco_images = [{"id": 1, "file_name": "../outside/private.png"}]
    cocos = {
        "coco_up.json": {"images": coco_images, "annotations": [{"id": 1, "image_id": 1, "caption": "a red square"}]},
        "coco_abs.json": {
            "images": [{"id": 1, "file_name": absolute}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "a red square"}],
        },
        "coco_unhashable.json": {
            "images": [{"id": 1, "file_name": "ok.png"}],
            "annotations": [{"id": 1, "image_id": [1, 2], "caption": "a red square"}],
        },
        "coco_dict_id.json": {
            "images": [{"id": {"a": 1}, "file_name": "ok.png"}],
            "annotations": [{"id": 1, "image_id": {"a": 1}, "caption": "a red square"}],
        },
    }
    for name, doc in cocos.items():
        write(src / name, json.dumps(doc))
    write(src / "coco_deep.json", "[" * 100000 + "]" * 100000)
    for name in [*cocos, "coco_deep.json"]:
        argv = ["data", "ingest", "--format", "coco", str(src / name), f"{out}/{name}"]
        cases.append(Case("ingest", argv, (name, "'1'")))
    write(src / "garbage.tar", b"not a tar at all" * 64)
    cases.append(
        Case("ingest", ["data", "ingest", "--format", "webdataset", str(src / "garbage.tar"), f"{out}/w"], ("garbage",))
    )
    write(src / "join.csv", "id,text\nx,y\n")
    write(src / "ok.csv", "key,image,caption\nx,ok.png,a red square\n")
    argv = ["data", "ingest", "--format", "csv", str(src / "ok.csv"), f"{out}/j", "--join", str(src / "join.csv")]
    cases.append(Case("ingest", argv, ("join.csv",)))
    return cases


def npz_bomb(path: Path, shape=(102_400_000_000,)) -> Path:
    """An .npz of a few hundred bytes whose array header declares `shape` of float32 (381 GiB)."""
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cls_token.npy", buf.getvalue() + b"\0" * 64)  # the header writer adds the magic
    return path


def official_towers(depth=3, width=64, mlp=128, vocab=100, grid=2, patch=14) -> tuple[dict, dict]:
    """Tiny towers in the official TIPS layout (google-deepmind/tips: DINOv2 names for the image
    tower, OpenCLIP-like ones for the text tower): name -> float32 array, small random values."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    w = width
    vision = {
        "cls_token": (1, 1, w),
        "register_tokens": (1, 1, w),
        "pos_embed": (1, 1 + grid * grid, w),
        "mask_token": (1, w),
        "patch_embed.proj.weight": (w, 3, patch, patch),
        "patch_embed.proj.bias": (w,),
        "norm.weight": (w,),
        "norm.bias": (w,),
    }
    text = {"temperature": (), "token_embedding.weight": (vocab, w), "ln_final.weight": (w,), "ln_final.bias": (w,)}
    vision_block = {"norm1.weight": (w,), "norm1.bias": (w,), "attn.qkv.weight": (3 * w, w), "attn.qkv.bias": (3 * w,)}
    vision_block |= {"attn.proj.weight": (w, w), "attn.proj.bias": (w,), "ls1.gamma": (w,), "ls2.gamma": (w,)}
    vision_block |= {"norm2.weight": (w,), "norm2.bias": (w,), "mlp.fc1.weight": (mlp, w), "mlp.fc1.bias": (mlp,)}
    vision_block |= {"mlp.fc2.weight": (w, mlp), "mlp.fc2.bias": (w,)}
    text_block = {"ln_1.weight": (w,), "ln_1.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,)}
    text_block |= {"attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,), "attn.out_proj.weight": (w, w)}
    text_block |= {"attn.out_proj.bias": (w,), "mlp.c_fc.weight": (mlp, w), "mlp.c_fc.bias": (mlp,)}
    text_block |= {"mlp.c_proj.weight": (w, mlp), "mlp.c_proj.bias": (w,)}
    for i in range(depth):
        vision |= {f"blocks.{i}.{k}": v for k, v in vision_block.items()}
        text |= {f"transformer.resblocks.{i}.{k}": v for k, v in text_block.items()}

    def arrays(shapes):
        return {k: (0.02 * rng.standard_normal(v)).astype(np.float32) for k, v in shapes.items()}

    vision, text = arrays(vision), arrays(text)
    text["temperature"] = np.float32(0.01)
    return vision, text


def import_cases(inp: Path, out: str) -> list[Case]:
    import numpy as np

    bomb = npz_bomb(inp / "npz" / "bomb_vision.npz")
    garbage = write(inp / "npz" / "garbage_text.npz", b"PK\x03\x04 not a zip at all")
    argv = ["checkpoint", "import", "--tokenizer", "hash", "--vision"]
    cases = [
        Case("checkpoint", [*argv, str(bomb), "--text", str(bomb), f"{out}/imported"], ("bomb_vision.npz",)),
        Case("checkpoint", [*argv, str(garbage), "--text", str(garbage), f"{out}/imp2"], ("garbage_text.npz",)),
    ]
    vision, text = official_towers()
    good = {"vision": inp / "npz" / "good_vision.npz", "text": inp / "npz" / "good_text.npz"}
    np.savez(good["vision"], **vision)
    np.savez(good["text"], **text)
    # Towers that load into a model but not the one they claim to be: all-NaN weights, a block missing
    # in the middle (the depth is read from the block numbers), a block without its MLP, no final norm.
    edited = {
        "nan_vision.npz": {k: np.full_like(v, np.nan) for k, v in vision.items()},
        "gap_vision.npz": {k: v for k, v in vision.items() if not k.startswith("blocks.1.")},
        "nomlp_vision.npz": {k: v for k, v in vision.items() if not k.startswith("blocks.2.mlp.")},
        "nonorm_text.npz": {k: v for k, v in text.items() if not k.startswith("ln_final.")},
        "inf_text.npz": {**text, "token_embedding.weight": np.full_like(text["token_embedding.weight"], np.inf)},
    }
    for name, arrays in edited.items():
        path = inp / "npz" / name
        np.savez(path, **arrays)
        towers = {**good, name.split("_")[1].removesuffix(".npz"): path}
        paths = [str(towers["vision"]), "--text", str(towers["text"])]
        cases.append(Case("checkpoint", [*argv, *paths, f"{out}/{name}"], (name,)))
    return cases


def checkpoint_cases(inp: Path) -> list[Case]:
    import torch

    root = inp / "ckpt"
    made = {
        "empty": None,
        "garbage": b"\x80\x04 not a checkpoint",
        "a_list": [1, 2, 3],
        "no_config": {"student": {"w": torch.zeros(2)}},
        "config_text": {"config": "model: tiny"},
        "bad_value": {"config": {"model": {"patch_size": 0}, "data": {}, "eval": {}}},
        "no_weights": {"config": {"model": {}, "eval": {}}},
        "bad_section": {"config": {"model": [], "eval": {}}, "student": {"w": torch.zeros(2)}},
        "nan_weight": {"config": {"model": {}, "eval": {}}, "student": {"w": torch.tensor([0.0, float("nan")])}},
    }
    cases = []
    for name, content in made.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            write(folder / "model.pt", content)
        elif content is not None:
            torch.save(content, folder / "model.pt")
        cases.append(Case("checkpoint", ["eval", str(folder)], (name,)))
    buf = io.BytesIO()
    torch.save({"config": {}, "student": {"w": torch.zeros(1000)}}, buf)
    write(root / "truncated" / "model.pt", buf.getvalue()[: len(buf.getvalue()) // 2])
    cases.append(Case("checkpoint", ["eval", str(root / "truncated")], ("truncated",)))
    cases.append(Case("checkpoint", ["eval", str(root / "absent")], ("absent",)))
    return cases


def table_cases() -> list[Case]:
    return [
        Case("table", ["table", "tipslab-train", "--sweep", "x' OR '1'='1"], ("--sweep",)),
        Case("table", ["report", "tipslab-train", "--sweep", 'a"b', "--out", "../out/report"], ("--sweep",)),
    ]


def torch_free_cases(inp: Path, out: str) -> list[Case]:
    """The catalogue but its checkpoints' families, made without torch; the same for the same SEED."""
    rng = random.Random(SEED)
    inp.mkdir(parents=True, exist_ok=True)
    cases = config_cases(rng, inp) + override_cases(inp) + spec_cases(inp)
    return cases + shard_cases(inp) + ingest_cases(inp, out) + table_cases()


def checkpoint_families(inp: Path, out: str) -> list[Case]:
    """The cases whose inputs torch makes: checkpoints, and official towers to import."""
    return checkpoint_cases(inp) + import_cases(inp, out)
