"""A static HTML report of one sweep, from the MLflow store alone.

The page holds the ablation table (with Δ's 95% intervals and marks, as `tipslab table`), the
training curves of each variant, one plot per metric (each seed, the mean ± sd over seeds on an axis
that does not start at 0, the marks of the table, n = 1 named, the paper's number where the spec
gives one), and PCA maps of patch features from each run's `features.npz` artifact: the first three
principal components of a run's patch tokens shown as RGB, the view the TIPS paper uses to show
spatial awareness. A run without that artifact is named on the page. Images are PNG files drawn with matplotlib.
"""

import html
import os
import re

import numpy as np

from .store import Sweep, metric_history, run_artifact
from .table import as_html, build

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}table.ablation{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}
td.best{background:#e8f4e8}td.real{background:#fdf3d8}p.note{font-size:90%;color:#444}figure{display:inline-block;margin:8px}img{max-width:520px}.missing{color:#a33}"""
# Written into the page so that a headless browser's DOM says whether every image decoded.
IMAGE_CHECK = """<script>window.addEventListener('load',function(){var i=document.images,ok=0;
for(var k=0;k<i.length;k++){if(i[k].complete&&i[k].naturalWidth>0)ok++;}
document.body.setAttribute('data-images',i.length);document.body.setAttribute('data-images-loaded',ok);});</script>"""


# Logged beside the losses but not losses: on a loss's axis they would flatten its curve.
NOT_LOSSES = (
    "train/lr",
    "train/weight_decay",
    "train/temperature",
    "train/teacher_momentum",
    "train/grad_norm",
    "train/param_norm",
    "train/stage",
    "train/stage_step",
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def training_curves(sweep: Sweep, out: str) -> list[tuple[str, str]]:
    """One PNG per loss term, on its own log axis: the variants overlaid (one colour each), one
    line per seed."""
    plt = _plt()
    figures = []
    runs = sorted(sweep.finished(), key=lambda r: (r.variant, r.seed))
    variants = list(dict.fromkeys(r.variant for r in runs))
    colour = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    logged = set().union(set(), *(r.metrics for r in runs))
    terms = sorted(k for k in logged if k.startswith("train/") and k not in NOT_LOSSES)
    for key in terms:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        labelled, positive = set(), True
        for run in runs:
            points = metric_history(sweep, run.run_id, key)
            if not points:
                continue
            positive = positive and min(v for _, v in points) > 0
            seeds = sum(r.variant == run.variant for r in runs)
            label = None if run.variant in labelled else f"{run.variant} ({seeds} seed{'s' * (seeds > 1)})"
            labelled.add(run.variant)
            ax.plot(*zip(*points), color=colour[run.variant], alpha=0.8, linewidth=1.2, label=label)
        if not labelled:
            plt.close(fig)
            continue
        if positive:
            ax.set_yscale("log")
        term = key.split("/", 1)[1]
        ax.set_xlabel("step")
        ax.set_ylabel(term + (" (log scale)" if positive else ""))
        ax.set_title(f"training: {term}")
        ax.legend(fontsize=7)
        axis = "log axis" if positive else "linear axis: a value at or below 0"
        caption = f"training curve of {term} ({axis}), every variant, one line per seed"
        figures.append((_save(plt, fig, out, f"curves_{_slug(term)}.png"), caption))
    return figures


def _save(plt, fig, out: str, name: str) -> str:
    """Write a figure as out/name (a small PNG) and free it; return the name."""
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=80)
    plt.close(fig)
    return name


def metric_plots(sweep: Sweep, out: str) -> list[tuple[str, str]]:
    """One PNG per metric, drawn by `draw_metric`, with its caption."""
    plt = _plt()
    table = build(sweep)
    figures = []
    for i, m in enumerate(table.metrics):
        rows = [(label, cells[i]) for label, cells in table.rows]
        if not any(c.values for _, c in rows):
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        caption = draw_metric(ax, m, rows)
        figures.append((_save(plt, fig, out, f"metric_{_slug(m['key'])}.png"), caption))
    return figures


def draw_variant(ax, x: int, c, goal: str, first: bool) -> list[float]:
    """One variant's seeds, mean ± sd, and its marks (n=1; * where Δ's interval excludes zero);
    returns the values the axis must show."""
    n, sd = len(c.values), c.sd or 0.0
    offsets = np.linspace(-0.12, 0.12, n) if n > 1 else np.zeros(1)
    ax.scatter(x + 0.18 + offsets, c.values, s=12, color="#999", zorder=2, label="seeds" if first else None)
    ax.errorbar(
        [x],
        [c.mean],
        yerr=[[sd], [sd]] if n > 1 else None,
        fmt="o",
        capsize=4,
        color="#2a7" if c.best else "#36a",
        zorder=3,
        label="mean ± sd" if first else None,
    )
    small = {"textcoords": "offset points", "va": "center"}
    if n == 1:
        ax.annotate("n=1", (x, c.mean), xytext=(-6, 0), ha="right", fontsize=7, color="#a33", **small)
    if c.diff is not None and c.diff.real:
        ax.annotate(
            "*",
            (x, c.mean + sd),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=13,
            fontweight="bold",
            color="#2a7" if c.diff.better(goal) else "#c33",
        )
    return [*c.values, c.mean - sd, c.mean + sd]


def draw_papers(ax, cells, lo: float, hi: float) -> None:
    """The paper's numbers: a diamond on the axis, or their value at the edge with an arrow."""
    papers = [(j, c.paper) for j, c in enumerate(cells) if c.paper is not None]
    inside = [(j, p) for j, p in papers if lo <= p <= hi]
    if inside:
        ax.scatter(*zip(*inside), marker="D", color="#c33", label="paper", zorder=4)
    for j, p in papers:
        if not lo <= p <= hi:
            above = p > hi
            ax.annotate(
                f"paper {p:g} {'↑' if above else '↓'}",
                (j, hi if above else lo),
                xytext=(0, -3 if above else 3),
                textcoords="offset points",
                ha="center",
                va="top" if above else "bottom",
                fontsize=7,
                color="#c33",
            )


def draw_metric(ax, metric: dict, rows) -> str:
    """Every seed as a dot and the mean ± sd over seeds per variant, on an axis fitted to our values
    (not from 0, so a 1-2 point difference shows), the baseline's mean as a dashed line, `*` over a
    variant whose Δ's 95% interval excludes zero (green: better by the metric's goal, red: worse),
    `n=1` beside a variant with one seed (no spread, no interval), and the paper's number as a
    diamond (its value at the edge, with an arrow, where it lies off the axis). Returns the caption,
    which says the same and names the variants with n = 1. `rows`: (label, table cell) per variant."""
    labels, cells = [label for label, _ in rows], [c for _, c in rows]
    ours = []
    for x, c in enumerate(cells):
        if c.values:
            ours += draw_variant(ax, x, c, metric["goal"], first=not ours)
    lo, hi = min(ours), max(ours)
    pad = (hi - lo) * 0.15 or max(abs(hi) * 0.05, 0.5)
    lo, hi = lo - pad, hi + 1.3 * pad  # room above for the marks
    base = next((c for c in cells if c.baseline), None)
    if base is not None:
        ax.axhline(base.mean, ls="--", lw=0.8, color="#666", label="baseline mean", zorder=1)
    draw_papers(ax, cells, lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    ticks = [f"{label}\n(n={len(c.values)})" for label, c in rows]
    ax.set_xticks(np.arange(len(labels)), ticks, rotation=20, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    name = metric.get("header") or metric["key"]
    ax.set_title(f"{name} ({'higher' if metric['goal'] == 'max' else 'lower'} is better)", fontsize=9)
    caption = (
        f"{metric['key']} per variant: mean ± sd over seeds (error bars), each seed a grey dot; the axis "
        "is fitted to the values and does not start at 0"
    )
    if base is not None:
        caption += "; dashed: the baseline's mean; * the 95% interval of Δ (Welch's t) excludes zero"
    single = [label for label, c in rows if len(c.values) == 1]
    if single:
        caption += f". n = 1 for {', '.join(single)}: one seed, no spread and no interval"
    return caption


def patch_tokens(npz) -> np.ndarray | None:
    """Patch features as (images, h, w, dim) from a features.npz, whatever its key names."""
    names = [k for k in ("patch_tokens", "patch_features", "patches") if k in npz.files]
    names += [k for k in npz.files if k not in names and npz[k].ndim in (3, 4)]
    for name in names:
        a = np.asarray(npz[name], dtype=np.float32)
        if a.ndim == 4:
            return a
        side = int(round(np.sqrt(a.shape[1])))
        if a.ndim == 3 and side * side == a.shape[1]:
            return a.reshape(a.shape[0], side, side, a.shape[2])
    return None


def pca_rgb(tokens: np.ndarray) -> np.ndarray:
    """First three principal components of all patches, min-max scaled per component to [0, 1]."""
    n, h, w, d = tokens.shape
    x = tokens.reshape(-1, d)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    y = x @ vt[:3].T
    if y.shape[1] < 3:
        y = np.pad(y, ((0, 0), (0, 3 - y.shape[1])))
    y = (y - y.min(0)) / np.maximum(y.max(0) - y.min(0), 1e-8)
    return y.reshape(n, h, w, 3)


def pca_maps(sweep: Sweep, out: str, per_run: int = 4) -> tuple[list[tuple[str, str]], list[str]]:
    """PCA maps of each finished run's patch features, and the runs that logged none."""
    plt = _plt()
    figures, missing = [], []
    for run in sorted(sweep.finished(), key=lambda r: (r.variant, r.seed)):
        label = f"{run.variant} (seed {run.seed})"
        path = run_artifact(sweep, run.run_id, "features.npz")
        tokens = patch_tokens(np.load(path)) if path else None
        if tokens is None:
            missing.append(label)
            continue
        maps = pca_rgb(tokens[:per_run])
        images = np.load(path)["images"][:per_run] if "images" in np.load(path).files else None
        rows = [maps] if images is None else [images, maps]  # the input above its map, when logged
        fig, axes = plt.subplots(len(rows), len(maps), figsize=(1.6 * len(maps), 1.7 * len(rows) + 0.2), squeeze=False)
        for row, pictures in zip(axes, rows):
            for ax, picture in zip(row, pictures):
                ax.imshow(picture, interpolation="nearest")
                ax.axis("off")
        fig.suptitle(label, fontsize=8)
        name = f"pca_{_slug(run.variant)}_seed{run.seed}.png"
        fig.savefig(os.path.join(out, name), dpi=80)
        plt.close(fig)
        figures.append((name, f"PCA of patch features, {label}"))
    return figures, missing


def write_report(sweep: Sweep, out: str) -> str:
    """Write index.html and its images into `out`; returns the page's path."""
    img = os.path.join(out, "img")
    os.makedirs(img, exist_ok=True)
    esc = html.escape

    def gallery(figures):
        return (
            "".join(
                f'<figure><img src="img/{esc(n)}" alt="{esc(a)}"><figcaption>{esc(a)}</figcaption></figure>'
                for n, a in figures
            )
            or '<p class="missing">nothing logged</p>'
        )

    curves, bars = training_curves(sweep, img), metric_plots(sweep, img)
    maps, missing = pca_maps(sweep, img)
    absent = (
        (f'<p class="missing">No features.npz artifact for: {esc(", ".join(missing))}; no PCA map for these runs.</p>')
        if missing
        else ""
    )
    title = sweep.spec.get("title") or sweep.experiment
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{STYLE}</style>{IMAGE_CHECK}</head>
<body>
<h1>{esc(title)}</h1>
<p>Experiment <code>{esc(sweep.experiment)}</code>, sweep <code>{esc(sweep.sweep_id)}</code>
({esc(sweep.status)}), from <code>{esc(_display_uri(sweep.tracking_uri))}</code>.</p>
<h2>Table</h2>
{as_html(build(sweep))}
<h2>Training curves</h2>
<div id="curves">{gallery(curves)}</div>
<h2>Metrics</h2>
<div id="bars">{gallery(bars)}</div>
<h2>PCA maps of patch features</h2>
<div id="pca">{gallery(maps) if maps else ""}{absent}</div>
</body></html>
"""
    path = os.path.join(out, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def _display_uri(uri: str) -> str:
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", uri)
