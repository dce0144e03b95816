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
    broken = [(f.relative_to(REPO), m) for f in files for m in imported_modules(f)
              if any(m == bad or m.startswith(bad + ".") for bad in FORBIDDEN[layer])]
    assert broken == []


def test_forbidden_import_is_detected(tmp_path):
    # the checker itself must be able to fail
    module = tmp_path / "m.py"
    module.write_text("import ray.train\nfrom mlflow import log_metric\nfrom . import sibling\n")
    assert list(imported_modules(module)) == ["ray.train", "mlflow"]
