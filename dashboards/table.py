"""The paper-style ablation table: rows are variants, columns the spec's metrics.

Each cell is the mean over seeds, with ± the standard deviation where there is more than one seed,
and always n; the best mean of each column is marked. With a baseline every row gets its difference
from the baseline's mean with the 95% confidence interval of Welch's t over the seeds (stats.py),
and a difference whose interval excludes zero is marked `*`, better or worse by the metric's goal.
With one seed on either side no interval can be given, and the table says so. The paper's number
for the same metric key, where the spec gives one, sits beside ours; for another key there is none,
so a paper number never sits beside one measured on other data. A footnote names the protocol that
produced each column (the runs' `tipslab.protocol.<key>` tags: e.g. DINOv2's linear segmentation at
the full label resolution, or the scenes' cheap patch-grid probe), and says so where runs differ.
"""

import csv
import html
import io
import math
import statistics
from dataclasses import dataclass

from .stats import NO_SPREAD, ONE_SEED, Diff, welch
from .store import PROTOCOL, Sweep

ARROWS = {"max": "↑", "min": "↓"}
REAL = "*"  # follows a difference whose 95% interval excludes zero


@dataclass
class Cell:
    values: list[float]
    best: bool = False
    diff: Diff | None = None  # against the baseline's values; None for the baseline itself or without one
    paper: float | None = None
    baseline: bool = False  # the baseline's own cell: Δ is 0 by definition, no interval

    @property
    def delta(self) -> float | None:
        """Mean minus the baseline's mean."""
        if self.baseline and self.values:
            return 0.0
        return self.diff.delta if self.diff else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        if not self.values:
            return "– (n=0)"
        if len(self.values) == 1:
            return f"{self.mean:.2f} (n=1)"
        return f"{self.mean:.2f} ± {self.sd:.2f} (n={len(self.values)})"

    def delta_text(self, goal: str) -> str:
        """Δ [95% CI], `*` and better/worse where the interval excludes zero, else why there is none."""
        if self.delta is None:
            return "–"
        d = self.diff
        if self.baseline or d is None:
            return f"{self.delta:+.2f}"
        if d.reason == ONE_SEED:
            return f"{d.delta:+.2f} (n=1: no CI)"
        if d.reason == NO_SPREAD:
            return f"{d.delta:+.2f} (no spread: no CI)"
        text = f"{d.delta:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"
        return f"{text} {REAL} {'better' if d.better(goal) else 'worse'}" if d.real else text


@dataclass
class Table:
    title: str
    notes: list[str]
    metrics: list[dict]
    with_paper: list[bool]  # per metric: the spec gives a paper number for this key
    with_delta: bool
    rows: list[tuple[str, list[Cell]]]  # (row label, one cell per metric)

    def header(self) -> list[str]:
        out = ["variant"]
        for m, paper in zip(self.metrics, self.with_paper):
            out.append(f"{m.get('header') or m['key']} {ARROWS[m['goal']]}")
            out += ["Δ [95% CI]"] * self.with_delta + ["paper"] * paper
        return out

    def cells(self, mark, real=lambda s: s) -> list[list[str]]:
        """Text rows; `mark(text)` decorates the best value of a column, `real(text)` a Δ whose
        interval excludes zero."""
        out = []
        for label, cells in self.rows:
            line = [label]
            for c, m, paper in zip(cells, self.metrics, self.with_paper):
                line.append(mark(c.text()) if c.best else c.text())
                if self.with_delta:
                    text = c.delta_text(m["goal"])
                    line.append(real(text) if c.diff and c.diff.real else text)
                if paper:
                    line.append("–" if c.paper is None else f"{c.paper:g}")
            out.append(line)
        return out


def build(sweep: Sweep) -> Table:
    spec = sweep.spec
    reference = {k: v or {} for k, v in spec.get("reference", {}).items() if k != "source"}
    metrics = spec["metrics"]
    finished = sweep.finished()
    variants = list(spec["variants"]) + sorted({t.variant for t in finished} - set(spec["variants"]))
    baseline = spec.get("baseline")
    rows, not_finite = [], []
    for variant in variants:
        runs = sorted((t for t in finished if t.variant == variant), key=lambda t: t.seed)
        cells = [
            Cell(
                [r.metrics[m["key"]] for r in runs if math.isfinite(r.metrics.get(m["key"], math.nan))],
                paper=reference.get(variant, {}).get(m["key"]),
            )
            for m in metrics
        ]
        not_finite += [
            f"{variant} seed {r.seed} ({m.get('header') or m['key']}: {r.metrics[m['key']]})"
            for m in metrics
            for r in runs
            if not math.isfinite(r.metrics.get(m["key"], 0.0))
        ]
        rows.append((variant + (" (baseline)" if variant == baseline else ""), cells))
    base_cells = next((cells for (label, cells), v in zip(rows, variants) if v == baseline), None)
    for i, m in enumerate(metrics):
        column = [cells[i] for _, cells in rows if cells[i].values]
        if len({c.mean for c in column}) > 1:  # a column of ties has no best
            pick = max if m["goal"] == "max" else min
            best = pick(c.mean for c in column)
            for c in column:
                c.best = c.mean == best
        if base_cells is not None and base_cells[i].values:
            base_cells[i].baseline = True
            for c in column:
                if c is not base_cells[i]:
                    c.diff = welch(c.values, base_cells[i].values)
    with_paper = [any(m["key"] in ref for ref in reference.values()) for m in metrics]
    title = spec.get("title") or sweep.experiment
    notes = [
        f"sweep {sweep.sweep_id}"
        + (f", {spec['size']}" if spec.get("size") else "")
        + "; mean ± sd (n) over seeds; best of each column marked"
        + (f"; Δ against the baseline {baseline}" if base_cells is not None else "")
    ]
    if base_cells is not None:
        notes += _delta_notes(rows, metrics)
    if not_finite:
        notes.append(f"not counted in n, means or intervals: {', '.join(not_finite)}")
    notes += _protocol_notes(finished, metrics)
    source = spec.get("reference", {}).get("source")
    if source and any(with_paper):
        notes.append(f"paper: {source}")
    return Table(title, notes, metrics, with_paper, base_cells is not None, rows)


def _protocol_notes(finished, metrics) -> list[str]:
    """One line per protocol: the columns it produced and its settings; a column whose runs used
    different protocols says so, with how many runs used each."""
    by_text: dict[str, list[str]] = {}
    mixed = []
    for m in metrics:
        header = m.get("header") or m["key"]
        texts = [t.tags[PROTOCOL + m["key"]] for t in finished if PROTOCOL + m["key"] in t.tags]
        if len(set(texts)) == 1:
            by_text.setdefault(texts[0], []).append(header)
        elif texts:
            counts = ", ".join(f"{text} (n={texts.count(text)})" for text in sorted(set(texts)))
            mixed.append(f"protocol of {header}: mixed, {counts}")
    return [f"protocol of {', '.join(headers)}: {text}" for text, headers in by_text.items()] + mixed


def _delta_notes(rows, metrics) -> list[str]:
    notes = [
        "Δ [95% CI]: mean difference from the baseline's mean with the two-sided 95% confidence interval "
        f"of Welch's t over seeds; {REAL} marks an interval that excludes zero, better or worse by the "
        "metric's goal (↑ higher is better, ↓ lower is better)"
    ]
    for reason, note in (
        (ONE_SEED, "one seed (n=1) on a side, so no interval can be given and nothing is marked"),
        (
            NO_SPREAD,
            "every seed gave the same value on both sides, so Welch's degrees of freedom "
            "are undefined: no interval, nothing marked",
        ),
    ):
        hit = [
            f"{label} ({m.get('header') or m['key']})"
            for label, cells in rows
            for c, m in zip(cells, metrics)
            if c.diff and c.diff.reason == reason
        ]
        if hit:
            notes.append(f"{', '.join(hit)}: {note}")
    return notes


def markdown(t: Table) -> str:
    header = t.header()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in t.cells(lambda s: f"**{s}**")]
    return "\n".join([f"**{t.title}**", ""] + lines + ["", *t.notes])


def as_html(t: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header())
    best, real = "\0", "\1"  # mark the best cell and a real Δ through escaping

    def td(c: str) -> str:
        if c.startswith(best):
            return f'<td class="best"><strong>{esc(c[1:])}</strong></td>'
        if c.startswith(real):
            return f'<td class="real"><strong>{esc(c[1:])}</strong></td>'
        return f"<td>{esc(c)}</td>"

    body = "".join(
        "<tr>" + "".join(td(c) for c in row) + "</tr>\n" for row in t.cells(lambda s: best + s, lambda s: real + s)
    )
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in t.notes)
    return (
        f'<table class="ablation">\n<caption>{esc(t.title)}</caption>\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}</tbody>\n</table>\n{notes}"
    )


def latex(t: Table) -> str:
    def tex(s: str) -> str:
        for a, b in (
            ("\\", r"\textbackslash{}"),
            ("&", r"\&"),
            ("%", r"\%"),
            ("_", r"\_"),
            ("#", r"\#"),
            ("±", r"$\pm$"),
            ("↑", r"$\uparrow$"),
            ("↓", r"$\downarrow$"),
            ("Δ", r"$\Delta$"),
            ("→", r"$\to$"),
            ("–", "--"),
        ):
            s = s.replace(a, b)
        return s

    header = t.header()
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + tex(t.title) + "}",
        r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        r"\toprule",
        " & ".join(tex(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for row in t.cells(lambda s: "\0" + s):
        lines.append(" & ".join(r"\textbf{" + tex(c[1:]) + "}" if c.startswith("\0") else tex(c) for c in row) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\smallskip{\footnotesize " + r" \\ ".join(tex(n) for n in t.notes) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines)


def as_csv(t: Table) -> str:
    """Numbers for scripts: mean, sd, n, best, then against the baseline the delta, its 95% interval
    (empty where none can be given), real (the interval excludes zero) and better (a real delta in
    the metric's direction: 1, against it: 0, else empty), and the paper's number, per metric."""
    header = ["variant"]
    for m, paper in zip(t.metrics, t.with_paper):
        key = m["key"]
        header += [f"{key} mean", f"{key} sd", f"{key} n", f"{key} best"]
        header += [f"{key} {x}" for x in ("delta", "ci_low", "ci_high", "real", "better")] * t.with_delta
        header += [f"{key} paper"] * paper
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for label, cells in t.rows:
        line = [label]
        for c, m, paper in zip(cells, t.metrics, t.with_paper):
            line += [_num(c.mean), _num(c.sd), len(c.values), int(c.best)]
            if t.with_delta:
                d = c.diff
                better = d.better(m["goal"]) if d else None
                line += [
                    _num(c.delta),
                    _num(d and d.low),
                    _num(d and d.high),
                    int(bool(d and d.real)),
                    "" if better is None else int(better),
                ]
            line += [_num(c.paper)] * paper
        writer.writerow(line)
    return out.getvalue()


def _num(x) -> str:
    return "" if x is None else f"{x:.6g}"


FORMATS = {"md": markdown, "html": as_html, "latex": latex, "csv": as_csv}


def render(sweep: Sweep, fmt: str = "md") -> str:
    return FORMATS[fmt](build(sweep))
