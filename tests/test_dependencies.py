"""Every third-party module tipslab imports is declared in pyproject.toml, and the cluster image's
requirements (infra/docker/install.sh) cover what its nodes import: MLflow's client (mlflow-skinny),
never the MLflow server and UI stack, which is the `ui` extra's."""

import ast
import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

from conftest import REPO
from packaging.markers import default_environment
from packaging.requirements import Requirement

PACKAGE = ("orchestrator", "jobs", "models", "dashboards")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_imports(files) -> dict[str, set[str]]:
    """Top-level module -> the files importing it (function-level imports too; relative ones not)."""
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def source_files(folders=None):
    if folders:
        return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))
    return sorted(p for p in REPO.rglob("*.py") if not p.relative_to(REPO).parts[0].startswith(("tests", ".venv", ".")))


def undeclared(imports: dict[str, set[str]], declared: set[str]) -> list[tuple[str, str]]:
    """(module, why) for every third-party module no declared distribution provides."""
    dists = packages_distributions()
    out = []
    for module in sorted(imports):
        if module in sys.stdlib_module_names or module == "tipslab":
            continue
        provided = {norm(d) for d in dists.get(module, [])}
        if not provided:
            out.append((module, "not installed"))
        elif not provided & declared:
            out.append((module, f"from {sorted(provided)}, not declared"))
    return out


def names(requirements) -> set[str]:
    return {norm(Requirement(r).name) for r in requirements}


CORE = names(PYPROJECT["project"]["dependencies"])
EXTRAS = {k: names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}


def test_every_imported_third_party_module_is_declared():
    imports = top_imports(source_files())
    assert {"torch", "ray", "mlflow", "matplotlib", "open_clip", "yaml"} <= set(imports)  # the walk sees them
    assert undeclared(imports, CORE | set().union(*EXTRAS.values())) == []


def test_the_declaration_check_can_fail(tmp_path):
    module = REPO / "tests" / "_undeclared_probe.py"  # inside the repository, as top_imports expects
    module.write_text("import requests\nimport os\nfrom no_such_module_xyz import a\nfrom . import sibling\n")
    try:
        imports = top_imports([module])
    finally:
        module.unlink()
    assert undeclared(imports, CORE) == [
        ("no_such_module_xyz", "not installed"),
        ("requests", "from ['requests'], not declared"),
    ]


def image_requirements() -> set[str]:
    done = subprocess.run(
        ["bash", str(REPO / "infra" / "docker" / "install.sh"), "requirements", str(REPO)],
        capture_output=True,
        text=True,
        check=True,
    )
    return names(done.stdout.split())


def test_the_image_installs_what_the_cluster_layers_import_and_mlflows_client_only():
    wanted = image_requirements()
    # jobs/ and models/ run on every worker; orchestrator/ holds the Tune trainable and the sweep driver.
    imports = top_imports(source_files(("jobs", "models", "orchestrator", "dashboards")))
    assert undeclared(imports, wanted) == []
    assert "mlflow-skinny" in wanted and "mlflow" not in wanted
    assert "transformers" in wanted  # `tipslab data caption` on the GPU nodes


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions that `requirements` name, and theirs, transitively (extras included)."""
    env, seen = default_environment(), set()
    todo = [(norm(r.name), frozenset(r.extras)) for r in map(Requirement, requirements)]
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        try:
            reqs = requires(key[0]) or []
        except PackageNotFoundError:
            continue
        for req in map(Requirement, reqs):
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *key[1])):
                todo.append((norm(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def server_only_modules() -> set[str]:
    """Top-level modules of what the full `mlflow` adds to its client that no other dependency needs."""
    others = [r for r in PYPROJECT["project"]["dependencies"] if not r.startswith("mlflow")]
    added = closure(["mlflow"]) - closure(["mlflow-skinny", "mlflow-tracing"]) - closure(others) - {"mlflow"}
    by_dist: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for d in dists:
            by_dist.setdefault(norm(d), set()).add(module)
    return {m for d in added for m in by_dist.get(d, ()) if not m.startswith("_")}


PROBE = r"""
import importlib, json, os, pathlib, sys, tempfile
for folder in ("jobs", "models"):
    for path in sorted(pathlib.Path(folder).rglob("*.py")):
        parts = path.with_suffix("").parts
        importlib.import_module(".".join(("tipslab",) + (parts[:-1] if parts[-1] == "__init__" else parts)))
import tipslab.orchestrator.sweep  # the module of the Tune trainable and the evaluation task
import tipslab.dashboards.table  # the driver prints the sweep's table
from mlflow.tracking import MlflowClient
d = tempfile.mkdtemp()
client = MlflowClient(f"sqlite:///{d}/mlflow.db")  # the embedded store the driver writes by default
exp = client.create_experiment("x", artifact_location=pathlib.Path(d, "art").as_uri())
run = client.create_run(exp).info.run_id
client.log_metric(run, "eval/x", 1.0)
client.log_dict(run, {"a": 1}, "spec.json")
assert client.get_run(run).data.metrics == {"eval/x": 1.0}
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_workers_and_the_sweep_driver_load_none_of_the_mlflow_server_stack():
    server_only = server_only_modules()
    # what the full mlflow adds: its web server and UI stack, and its model flavours' libraries
    assert {"flask", "gunicorn", "graphene", "sklearn"} <= server_only
    assert not server_only & {"mlflow", "sqlalchemy", "alembic", "pandas", "pyarrow", "scipy", "aiohttp"}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert {"torch", "ray", "mlflow", "sqlalchemy"} <= loaded  # the probe did load the layers and the store
    assert loaded & server_only == set()


def test_ui_without_the_full_mlflow_says_which_extra_to_install(home, capsys, monkeypatch):
    from tipslab.orchestrator import sweep_commands
    from tipslab.orchestrator.cli import main

    assert sweep_commands.ui_installed()  # this environment has it (the test extra)
    assert (home / "mlflow.db").is_file()  # a store to open
    monkeypatch.setattr(sweep_commands, "ui_installed", lambda: False)
    assert main(["ui"]) == 2
    assert "pip install 'tipslab[ui]'" in capsys.readouterr().err
