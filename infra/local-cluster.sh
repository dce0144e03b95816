#!/usr/bin/env bash
# A multi-node Ray cluster on this machine (loopback), with Ray's token authentication.
#
#   infra/local-cluster.sh start [--nodes 3] [--cpus-per-node 1] [--resources '{"trainer": 1}']
#   eval "$(infra/local-cluster.sh env)"    # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH
#   tipslab train ablations/base/tips_tiny.yaml
#   infra/local-cluster.sh status
#   infra/local-cluster.sh stop
#
# Details: the docstring of orchestrator/localcluster.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" -m tipslab.orchestrator.localcluster "$@"
