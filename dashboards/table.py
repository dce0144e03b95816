"""The paper-style ablation table: rows are variants, columns the spec's metrics.

Each cell is the mean over seeds, with ± the standard deviation and n when there is more than one
seed; the best mean of each column is marked, and with a baseline every row gets its difference
from the baseline's mean. The paper's number for the same metric key, where the spec gives one,
sits beside ours; for another key there is none, so a paper number never sits beside one measured
on other data.
"""
import csv
import html
import io
import statistics
from dataclasses import dataclass

from .store import Sweep

ARROWS = {"max": "↑", "min": "↓"}


@dataclass
class Cell:
    values: list[float]
    best: bool = False
    delta: float | None = None  # mean minus the baseline's mean
    paper: float | None = None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self) -> str:
        if not self.values:
            return "–"
        if len(self.values) == 1:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} ± {self.sd:.2f} (n={len(self.values)})"


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
            out += ["Δ"] * self.with_delta + ["paper"] * paper
        return out

    def cells(self, mark) -> list[list[str]]:
        """Text rows; `mark(text)` decorates the best value of a column."""
        out = []
        for label, cells in self.rows:
            line = [label]
            for c, paper in zip(cells, self.with_paper):
                line.append(mark(c.text()) if c.best else c.text())
                if self.with_delta:
                    line.append("–" if c.delta is None else f"{c.delta:+.2f}")
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
    rows = []
    for variant in variants:
        runs = [t for t in finished if t.variant == variant]
        cells = [Cell([r.metrics[m["key"]] for r in runs if m["key"] in r.metrics],
                      paper=reference.get(variant, {}).get(m["key"])) for m in metrics]
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
            for c in column:
                c.delta = c.mean - base_cells[i].mean
    with_paper = [any(m["key"] in ref for ref in reference.values()) for m in metrics]
    title = spec.get("title") or sweep.experiment
    notes = [f"sweep {sweep.sweep_id}" + (f", {spec['size']}" if spec.get("size") else "") +
             "; mean ± sd (n) over seeds; best of each column marked" +
             (f"; Δ against the baseline {baseline}" if base_cells is not None else "")]
    source = spec.get("reference", {}).get("source")
    if source and any(with_paper):
        notes.append(f"paper: {source}")
    return Table(title, notes, metrics, with_paper, base_cells is not None, rows)


def markdown(t: Table) -> str:
    header = t.header()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in t.cells(lambda s: f"**{s}**")]
    return "\n".join([f"**{t.title}**", *t.notes, ""] + lines)


def as_html(t: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in t.header())
    marker = "\0"  # marks the best cell through escaping
    body = "".join("<tr>" + "".join(f"<td class=\"best\"><strong>{esc(c[1:])}</strong></td>" if c.startswith(marker)
                                    else f"<td>{esc(c)}</td>" for c in row) + "</tr>\n"
                   for row in t.cells(lambda s: marker + s))
    notes = "".join(f"<p class=\"note\">{esc(n)}</p>" for n in t.notes)
    return (f"<table class=\"ablation\">\n<caption>{esc(t.title)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}</tbody>\n</table>\n{notes}")


def latex(t: Table) -> str:
    def tex(s: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                     ("±", r"$\pm$"), ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("Δ", r"$\Delta$"),
                     ("→", r"$\to$"), ("–", "--")):
            s = s.replace(a, b)
        return s

    header = t.header()
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + tex(t.title) + "}",
             r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(tex(h) for h in header) + r" \\", r"\midrule"]
    for row in t.cells(lambda s: "\0" + s):
        lines.append(" & ".join(r"\textbf{" + tex(c[1:]) + "}" if c.startswith("\0") else tex(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "% " + " / ".join(t.notes), r"\end{table}"]
    return "\n".join(lines)


def as_csv(t: Table) -> str:
    """Numbers for scripts: mean, sd, n, delta, paper and best per metric."""
    header = ["variant"]
    for m, paper in zip(t.metrics, t.with_paper):
        key = m["key"]
        header += [f"{key} mean", f"{key} sd", f"{key} n", f"{key} best"]
        header += [f"{key} delta"] * t.with_delta + [f"{key} paper"] * paper
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for label, cells in t.rows:
        line = [label]
        for c, paper in zip(cells, t.with_paper):
            line += [_num(c.mean), _num(c.sd), len(c.values), int(c.best)]
            line += [_num(c.delta)] * t.with_delta + [_num(c.paper)] * paper
        writer.writerow(line)
    return out.getvalue()


def _num(x) -> str:
    return "" if x is None else f"{x:.6g}"


FORMATS = {"md": markdown, "html": as_html, "latex": latex, "csv": as_csv}


def render(sweep: Sweep, fmt: str = "md") -> str:
    return FORMATS[fmt](build(sweep))
