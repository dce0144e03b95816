"""The recipe card of a spec: every setting of each row with where its value comes from.

SOURCES maps each experiment key (dotted, as in the resolved config) to the origin of its values,
taken from the comments of models/config.py and jobs/config.py and from the paper digest: the TIPS
paper, the official TIPS code, DINOv2's or DINO's published defaults, CLIP's, Tag2Text's, or a
tipslab choice ("ours": a guess where the papers are silent). An entry is either one source for
every value, or {value: source} for the values whose origin is known, with "*" for any other value;
a value the entry does not list was set by the spec (or its base file): "spec", whose comments say
why. Keys that only say how a run is carried out (paths, resources, logging) are "run" and shown
only where they differ between rows. A key missing here is "?": tests/orchestrator/test_recipe.py
fails on it, so every new config key gets its source when it is added.
"""

import json

LEGEND = {
    "TIPS": "the TIPS paper (ICLR 2025)",
    "TIPS-code": "the official TIPS code (its model sizes and loader settings)",
    "DINOv2": "DINOv2's published defaults (the paper is silent or unverified)",
    "DINO": "DINO's defaults",
    "CLIP": "CLIP/OpenCLIP's defaults",
    "Tag2Text": "the Tag2Text paper",
    "ours": "a tipslab choice: a guess where the papers are silent",
    "spec": "set by the spec or its base file to a value the registry does not source (see their comments)",
    "derived": "follows from another key (0: from model.size)",
    "run": "how the run is carried out (paths, resources, logging); no effect on what is learnt",
    "?": "no source known: add the key to orchestrator/recipe.py",
}
RUN = "run"
_DERIVED = {0: "derived"}
SOURCES: dict[str, object] = {
    "model.size": {"B": "TIPS", "tiny": "ours", "small-cpu": "ours"},
    "model.width": _DERIVED,
    "model.depth": _DERIVED,
    "model.heads": _DERIVED,
    "model.mlp_dim": _DERIVED,
    "model.text_depth": _DERIVED,
    "model.patch_size": {14: "TIPS"},
    "model.image_size": {224: "TIPS", 448: "TIPS", 112: "ours"},
    "model.layerscale_init": {1e-5: "DINOv2", 1.0: "TIPS-code", 0.1: "ours"},
    "model.mlp": {"auto": "TIPS-code"},
    "model.pos_interpolation": {"bilinear": "TIPS-code"},
    "model.vocab_size": {32000: "TIPS", 4096: "ours"},
    "model.max_text_len": {64: "TIPS"},
    "model.tokenizer": {"hash": "ours", "*": "TIPS"},  # a SentencePiece model: the paper's kind (32k)
    "model.init_temperature": {0.07: "CLIP"},
    "model.head_hidden": {2048: "DINOv2", 256: "ours"},
    "model.head_bottleneck": {256: "DINOv2", 64: "ours"},
    "model.distill_prototypes": {65536: "DINOv2"},
    "model.mim_prototypes": {32768: "TIPS"},
    "model.head_prototypes": {0: "derived", "*": "ours"},
    "model.head_norm_last_layer": {True: "DINO"},
    "model.shared_heads": {False: "DINOv2", True: "ours"},  # DINOv2's ViT-L/g configs: separate heads
    "model.num_tags": "derived",  # the tag vocabulary's size
    "model.tag_layers": {2: "Tag2Text"},
    "model.tag_heads": {4: "Tag2Text"},
    "loss.distill_weight": {1.0: "TIPS", 0.1: "ours"},
    "loss.mim_weight": {2.0: "TIPS", 0.2: "ours"},
    "loss.caption_mode": {"dual_cls": "TIPS"},
    "loss.clip_view": "ours",
    "loss.clip_weight": {1.0: "TIPS", "*": "ours"},  # 0 only in a stage of ours (no L_clip)
    "loss.centering": {"mean": "DINO", "sinkhorn_knopp": "DINOv2"},
    "loss.sinkhorn_iterations": {3: "DINOv2"},
    "loss.distill_cls": "ours",  # the paper's figure suggests CLS_1 (unverified)
    "loss.student_temp": {0.1: "DINOv2"},
    "loss.teacher_temp": {0.04: "DINOv2"},
    "loss.center_momentum": {0.9: "DINOv2"},
    "loss.mask_ratio": {0.75: "TIPS"},
    "loss.mask_mode": {"random": "TIPS"},
    "loss.tag_weight": "ours",
    "loss.tag_gamma_neg": {7.0: "Tag2Text"},
    "loss.tag_gamma_pos": {0.0: "Tag2Text"},
    "loss.tag_clip": {0.05: "Tag2Text"},
    "loss.chunk_rows": RUN,  # how the loss is computed (memory), the same loss to rounding
    "data.source": "spec",
    "data.root": RUN,
    "data.train_split": RUN,
    "data.scenes_train": "ours",
    "data.scenes_probe": "ours",
    "data.scene_seed": RUN,
    "data.batch_size": "ours",  # per worker: the paper's global batch is not in the digest
    "data.local_crops": {8: "DINOv2", 2: "ours"},
    "data.local_crop_size": {98: "DINOv2", 56: "ours"},
    "data.global_crop_scale": {(0.32, 1.0): "DINOv2", (0.8, 1.0): "ours"},
    "data.local_crop_scale": {(0.05, 0.32): "DINOv2", (0.25, 0.5): "ours"},
    "data.tag_vocab": "spec",
    "data.cpus": RUN,
    "data.views_actor_rows": RUN,
    "data.max_image_pixels": RUN,
    "data.max_bad_fraction": RUN,
    "data.augment": {"dinov2": "DINOv2", "none": "ours"},
    "train.steps": "ours",
    "train.lr": "ours",
    "train.min_lr": "ours",
    "train.warmup_steps": {0: "derived", "*": "ours"},  # 0: train.warmup_fraction gives it
    "train.warmup_fraction": {0.1: "DINOv2", 0.0: "derived", "*": "ours"},  # 10 of 100 epochs
    "train.weight_decay": {0.04: "DINOv2", "*": "ours"},
    "train.weight_decay_end": {0.4: "DINOv2", "*": "ours"},
    "train.grad_clip": {3.0: "DINOv2", "*": "ours"},
    "train.seed": RUN,
    "train.log_every": RUN,
    "train.checkpoint_every": RUN,
    "train.num_workers": RUN,
    "train.gpus_per_worker": RUN,
    "train.cpus_per_worker": RUN,
    "train.teacher_momentum": {0.992: "DINOv2"},
    "train.teacher_momentum_end": {1.0: "DINOv2"},
    "train.teacher_temp_end": {0.07: "DINOv2"},
    "train.teacher_temp_warmup_steps": {0: "derived", "*": "ours"},  # 0: the fraction below gives it
    "train.teacher_temp_warmup_fraction": {0.3: "DINOv2", 0.0: "derived", "*": "ours"},  # 30 of 100 epochs
    "train.stages": {(): "TIPS"},  # one joint stage; the rows' stages are the spec's
    "train.checkpoints_to_keep": RUN,
    "train.max_failures": RUN,
    "train.probe_every": RUN,
    "train.probe_images": RUN,
    "train.probe_metrics": RUN,
    "train.prefetch_batches": RUN,
    "train.strategy": RUN,
    "train.run_name": RUN,
    "train.compile": RUN,
    "train.compile_mode": RUN,
    "train.activation_checkpointing": RUN,
    "eval.dataset": RUN,
    "eval.probe_train_split": RUN,
    "eval.probe_test_split": RUN,
    "eval.probes": RUN,
    "eval.datasets": RUN,
    "eval.retrieval_token": "ours",
    "eval.retrieval_caption": {"web_caption": "TIPS", "synthetic_caption": "ours"},
    "eval.zero_shot_token": {"cls_web": "TIPS"},
    "eval.knn_token": {"cls_web": "TIPS"},
    "eval.zero_shot_template_set": {"openai": "CLIP", "simple": "CLIP", "*": "ours"},  # TIPS lists none
    "eval.zero_shot_templates": "ours",
    "eval.knn_k": {20: "DINO"},
    "eval.knn_temperature": {0.07: "DINO"},
    "eval.seg_probe_epochs": "ours",
    "eval.seg_probe_lr": "ours",
    "eval.depth_probe_epochs": "ours",
    "eval.depth_probe_lr": "ours",
    "eval.depth_bins": {256: "DINOv2"},
    "eval.depth_max": {0.0: "DINOv2"},  # 0: the dataset's cap (NYUv2: 10 m, DINOv2's)
    "eval.dense_train_size": "ours",
    # auto: the standard protocol on standard datasets, the cheap one on the scenes (docs/probes.md)
    "eval.seg_protocol": {"linear_upsampled": "DINOv2", "*": "ours"},
    "eval.depth_protocol": {"dinov2_linear": "DINOv2", "*": "ours"},
    "eval.dense_label_size": "ours",
    "eval.depth_bin_spacing": {"linear": "DINOv2", "*": "ours"},
    "eval.pca_images": RUN,
    "eval.batch_size": RUN,
}


def _norm(value):
    """A hashable, comparable form of a value (lists as tuples, numbers as floats)."""
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def settings(config: dict) -> dict:
    """The experiment's keys (dotted), `eval.datasets` kept whole (its keys are names, not settings)."""
    out = {}
    for section, values in config.items():
        if isinstance(values, dict):
            out.update({f"{section}.{key}": value for key, value in values.items()})
        else:
            out[section] = values
    return out


def source(key: str, value) -> str:
    entry = SOURCES.get(key)
    if entry is None:
        return "?"
    if isinstance(entry, str):
        return entry
    listed = {_norm(k): v for k, v in entry.items() if k != "*"}
    return listed.get(_norm(value), entry.get("*", "spec"))


def show(value, width: int = 36) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = text or '""'
    return text if len(text) <= width else text[: width - 1] + "…"


def recipe(plan) -> dict:
    """{spec, size, rows, searched, keys: {key: {row: {value, source}}}, legend}: one config per row
    (its first seed), every key with a source, except "run" keys that are the same in every row."""
    rows = {}
    for t in plan.trials:
        rows.setdefault(t.variant, settings(t.config))
    names = list(rows)
    keys = {}
    for key in next(iter(rows.values())):
        cells = {row: {"value": rows[row][key], "source": source(key, rows[row][key])} for row in names}
        same = len({json.dumps(c["value"], sort_keys=True) for c in cells.values()}) == 1
        if same and all(c["source"] == RUN for c in cells.values()):
            continue
        keys[key] = cells
    searched = sorted(plan.search.space) if plan.search is not None and plan.sampled else []
    used = {c["source"] for cells in keys.values() for c in cells.values()}
    return {
        "spec": plan.spec["name"],
        "size": plan.size,
        "rows": names,
        "searched": searched,
        "keys": keys,
        "legend": {tag: text for tag, text in LEGEND.items() if tag in used},
    }


def counts(card: dict) -> dict[str, int]:
    """How many keys of the card take each source (in the first row)."""
    out: dict[str, int] = {}
    for cells in card["keys"].values():
        tag = next(iter(cells.values()))["source"]
        out[tag] = out.get(tag, 0) + 1
    return out


def format_recipe(card: dict) -> str:
    """The card as Markdown, readable in a terminal: the settings every row shares (key, value,
    source), then those that differ (one column per row, each cell `value [source]`), then the legend."""
    shared, differ = [], []
    for key, cells in card["keys"].items():
        values = {json.dumps(c["value"], sort_keys=True) for c in cells.values()}
        (shared if len(values) == 1 else differ).append((key, cells))
    lines = [f"## recipe of {card['spec']} ({card['size']}): {len(card['rows'])} row(s)", ""]
    width = max([len(k) for k, _ in shared + differ] + [3])
    lines += [
        "settings every row shares:",
        "",
        f"| {'key':<{width}} | value | source |",
        f"|{'-' * (width + 2)}|---|---|",
    ]
    for key, cells in shared:
        c = next(iter(cells.values()))
        lines.append(f"| {key:<{width}} | {show(c['value'])} | {c['source']} |")
    if differ:
        lines += ["", "settings that differ between rows:", ""]
        lines.append(f"| {'key':<{width}} | " + " | ".join(card["rows"]) + " |")
        lines.append(f"|{'-' * (width + 2)}|" + "---|" * len(card["rows"]))
        for key, cells in differ:
            row = " | ".join(f"{show(cells[r]['value'], 28)} [{cells[r]['source']}]" for r in card["rows"])
            lines.append(f"| {key:<{width}} | {row} |")
    if card["searched"]:
        lines += [
            "",
            f"searched (each sample draws them; the values above are the starting point): "
            f"{', '.join(card['searched'])}",
        ]
    lines += ["", "sources:"] + [f"  {tag:<9} {text}" for tag, text in card["legend"].items()]
    return "\n".join(lines)


def summary_line(card: dict) -> str:
    """One line for `tipslab plan`: how many of the card's keys come from each source."""
    parts = ", ".join(f"{n} {tag}" for tag, n in sorted(counts(card).items(), key=lambda kv: -kv[1]))
    return f"recipe: {len(card['keys'])} settings ({parts}); the card: tipslab plan SPEC --recipe"
