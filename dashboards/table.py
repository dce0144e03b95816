"""The paper-style ablation table: rows are variants, columns the spec's metrics.

Each cell is the mean over seeds, with ± the standard deviation and (n) when there is more than one
seed. The paper's number for the same metric key, where the spec gives one, sits beside ours; for
another key there is none, so a paper number never sits beside one measured on other data.
"""
import csv
import io
import statistics

from .store import Sweep

ARROWS = {"max": "↑", "min": "↓"}


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def rows(sweep: Sweep) -> tuple[list[str], list[list[str]]]:
    spec = sweep.spec
    reference = {k: v for k, v in spec.get("reference", {}).items() if k != "source"}
    metrics = spec["metrics"]
    header = ["variant"]
    for m in metrics:
        header.append(f"{m['header'] or m['key']} {ARROWS[m['goal']]}")
        if any(m["key"] in ref for ref in reference.values()):
            header.append("paper")
    body = []
    for variant in spec["variants"]:
        runs = [t for t in sweep.trials if t.variant == variant and t.status == "FINISHED"]
        line = [variant + (" (baseline)" if variant == spec.get("baseline") else "")]
        for m in metrics:
            line.append(cell([r.metrics[m["key"]] for r in runs if m["key"] in r.metrics]))
            if any(m["key"] in ref for ref in reference.values()):
                value = reference.get(variant, {}).get(m["key"])
                line.append("–" if value is None else f"{value:g}")
        body.append(line)
    return header, body


def markdown(sweep: Sweep) -> str:
    header, body = rows(sweep)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    title = sweep.spec.get("title") or sweep.experiment
    notes = [f"**{title}** (sweep {sweep.sweep_id}, {sweep.spec.get('size', '')})".replace(", )", ")")]
    source = sweep.spec.get("reference", {}).get("source")
    if source and "paper" in header:
        notes.append(f"paper: {source}")
    return "\n".join(notes + [""] + lines)


def as_csv(sweep: Sweep) -> str:
    header, body = rows(sweep)
    out = io.StringIO()
    csv.writer(out).writerows([header] + body)
    return out.getvalue()


FORMATS = {"md": markdown, "csv": as_csv}


def render(sweep: Sweep, fmt: str = "md") -> str:
    return FORMATS[fmt](sweep)
