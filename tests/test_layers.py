"""The layer rules of ARCHITECTURE.md, read from the imports of every module."""

import ast

import pytest
from conftest import REPO

FORBIDDEN = {
    "models": {"ray", "mlflow", "tipslab.jobs", "tipslab.orchestrator", "tipslab.dashboards"},
    "jobs": {"mlflow", "tipslab.orchestrator", "tipslab.dashboards"},
    "dashboards": {"torch", "ray", "tipslab.models", "tipslab.jobs", "tipslab.orchestrator"},
}


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_down_only(layer):
    files = sorted((REPO / layer).rglob("*.py"))
    assert files, f"no modules in {layer}/"
    broken = [
        (f.relative_to(REPO), m)
        for f in files
        for m in imported_modules(f)
        if any(m == bad or m.startswith(bad + ".") for bad in FORBIDDEN[layer])
    ]
    assert broken == []


def test_forbidden_import_is_detected(tmp_path):
    # the checker itself must be able to fail
    module = tmp_path / "m.py"
    module.write_text("import ray.train\nfrom mlflow import log_metric\nfrom . import sibling\n")
    assert list(imported_modules(module)) == ["ray.train", "mlflow"]


def package_modules() -> dict[str, tuple]:
    """tipslab's module names -> (path, is_package), from the folders the install maps."""
    out = {}
    for folder in ("orchestrator", "jobs", "models", "dashboards"):
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(["tipslab", *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return out


def import_graph(modules: dict[str, tuple]) -> dict[str, set[str]]:
    """module -> the tipslab modules it imports anywhere (function-level imports too)."""
    graph = {}
    for name, (path, is_package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = name.split(".") if is_package else name.split(".")[:-1]
                if node.level:
                    full = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                deps.update(next((c for c in (f"{full}.{a.name}", full) if c in modules), None) for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = deps - {name, None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected parts of more than one module."""
    reach = {v: set() for v in graph}
    for v in graph:  # the graph is small: a search from every module
        todo = list(graph[v])
        while todo:
            w = todo.pop()
            if w not in reach[v]:
                reach[v].add(w)
                todo.extend(graph[w])
    parts = {frozenset({v} | {w for w in reach[v] if v in reach[w]}) for v in graph}
    return [set(p) for p in parts if len(p) > 1]


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph(package_modules())) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    graph = import_graph(package_modules())  # relative and absolute imports are both read
    assert "tipslab.models.errors" in graph["tipslab.models.config"]
    assert "tipslab.jobs.train.step" in graph["tipslab.jobs.train.stage_parts"]
