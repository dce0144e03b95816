#!/usr/bin/env bash
# An MLflow tracking server for one machine, for when several processes or colleagues log to the
# same store (a sqlite file alone suits one writer on one machine; see infra/README.md).
#
#   infra/mlflow/serve.sh [--host 127.0.0.1] [--port 5000] [--dir DIR] [--workers 2]
#                         [--backend-store-uri URI] [--artifacts-destination URI]
#   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#
# Default store: sqlite at DIR/mlflow.db and artifacts under DIR/artifacts, where DIR is
# $TIPSLAB_HOME/mlflow-server (./tipslab-runs/mlflow-server). A backend URI (postgresql://...)
# replaces the sqlite file; an s3:// artifacts destination replaces the folder, with the server's
# own AWS credentials (its environment or role; MLFLOW_S3_ENDPOINT_URL for an S3-compatible store):
# clients upload through the server and need none. Binding another host than loopback exposes the
# server: name the Host headers it accepts in MLFLOW_SERVER_ALLOWED_HOSTS.
set -euo pipefail

host=127.0.0.1
port=5000
dir="${TIPSLAB_HOME:-tipslab-runs}/mlflow-server"
workers=2
backend=""
artifacts=""
while [ $# -gt 0 ]; do
  case "$1" in
    --host|--port|--dir|--workers|--backend-store-uri|--artifacts-destination)
      [ $# -ge 2 ] || { echo "serve.sh: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --host) host=$2 ;;
        --port) port=$2 ;;
        --dir) dir=$2 ;;
        --workers) workers=$2 ;;
        --backend-store-uri) backend=$2 ;;
        --artifacts-destination) artifacts=$2 ;;
      esac
      shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "serve.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
backend=${backend:-sqlite:///$dir/mlflow.db}
artifacts=${artifacts:-$dir/artifacts}

# Nothing calls out (as orchestrator/runtime.py).
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1

# The mlflow next to the project's Python when run from a checkout, else the one on PATH.
here=$(cd "$(dirname "$0")/../.." && pwd)
mlflow=mlflow
[ -x "$here/.venv/bin/mlflow" ] && mlflow="$here/.venv/bin/mlflow"

echo "serve.sh: MLflow on http://$host:$port, runs in ${backend%%://*}, artifacts in $artifacts" >&2
exec "$mlflow" server --host "$host" --port "$port" --workers "$workers" \
  --backend-store-uri "$backend" --serve-artifacts --artifacts-destination "$artifacts"
