#!/usr/bin/env bash
# The install steps of the tipslab image, one per Dockerfile layer, so that a change to the code does
# not reinstall several GB of dependencies. They install into the Python that `python` names, and
# tests/infra/test_docker.py runs them in a fresh virtual environment (no container engine there).
#
#   install.sh requirements SRC   print what `deps` installs (tests/test_dependencies.py reads it)
#   install.sh deps SRC      the pinned dependencies (pyproject.toml's, at constraints.txt's versions)
#   install.sh project SRC   tipslab itself, as a regular (not editable) install
#   install.sh check SRC     the installed environment is consistent and runs
set -euo pipefail

step=${1:?usage: install.sh requirements|deps|project|check SRC}
src=$(cd "${2:?usage: install.sh requirements|deps|project|check SRC}" && pwd)

# What every node imports: the core dependencies (MLflow's client, mlflow-skinny, not its server and
# UI stack: the team's tracking server has an image of its own, infra/mlflow/Dockerfile) and the
# `caption` extra, for `tipslab data caption` on the GPU nodes. The build requirements too: `project`
# builds the wheel without build isolation, from what is installed here, so that the image's build
# uses the pinned environment.
requirements() {
  python - "$src/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
extras = project["project"]["optional-dependencies"]
print("\n".join(project["build-system"]["requires"] + project["project"]["dependencies"] + extras["caption"]))
PY
}

case "$step" in
  requirements)
    requirements
    ;;
  deps)
    list=$(mktemp)
    requirements > "$list"
    python -m pip install --no-cache-dir -c "$src/constraints.txt" -r "$list"
    rm -f "$list"
    ;;
  project)
    python -m pip install --no-cache-dir --no-deps --no-build-isolation "$src"
    ;;
  check)
    python -m pip check
    tipslab --help > /dev/null
    python - "$src/pyproject.toml" <<'PY'
import sys, tomllib

import ray
import torch

import tipslab.dashboards.table, tipslab.jobs.train.loop, tipslab.models, tipslab.orchestrator.cli  # noqa: F401

# Every node of a cluster must run the Ray version the project pins, or nodes refuse to join.
pin = next(d for d in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"] if d.startswith("ray["))
assert ray.__version__ == pin.split("==")[1], f"ray {ray.__version__} installed, {pin} pinned"
assert torch.version.cuda, f"torch {torch.__version__} is a CPU build: GPU workers need its CUDA build"
print(f"tipslab image check: ray {ray.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
PY
    ;;
  *)
    echo "install.sh: unknown step '$step' (requirements, deps, project or check)" >&2
    exit 2
    ;;
esac
