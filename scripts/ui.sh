#!/usr/bin/env bash
# The Dagster UI (`dagster dev`: webserver and daemon, so schedules and sensors tick) on
# 127.0.0.1:3000 and the MLflow UI on 127.0.0.1:5000, over the project's own stores.
# Ctrl-C or SIGTERM stops both. DAGSTER_PORT and MLFLOW_PORT move them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.venv/bin"
HOST=127.0.0.1
DAGSTER_PORT="${DAGSTER_PORT:-3000}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT/.dagster}"
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DVC_NO_ANALYTICS=1
cd "$ROOT"
mkdir -p "$DAGSTER_HOME" mlruns/artifacts
# The instance settings are ./dagster.yaml; the home links to them. A link left dangling by an
# older checkout (it pointed at orchestration/dagster.yaml) is replaced.
[[ -e "$DAGSTER_HOME/dagster.yaml" ]] || ln -sfn "$ROOT/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"

# A background job of a non-interactive shell starts with SIGINT ignored, and `dagster dev`
# then ignores SIGTERM too (../shared/docs/stack.md): start each server through an exec that
# restores SIGINT's default handler.
DEFAULT_SIGINT='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])'
pids=()
# `dagster dev`, run here in the project root so that runs resolve relative paths as before,
# through orchestration/dagster_dev.py: it drops dagster's warning that ./dagster.yaml "will not
# be used", which is false while $DAGSTER_HOME/dagster.yaml links to it (and kept otherwise).
"$BIN/python" -c "$DEFAULT_SIGINT" "$BIN/python" -m orchestration.dagster_dev \
    -m orchestration.definitions -h "$HOST" -p "$DAGSTER_PORT" &
pids+=($!)
# One worker and no job runner (GenAI evaluation jobs): a browser UI on a small machine.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    "$BIN/python" -c "$DEFAULT_SIGINT" "$BIN/mlflow" ui -h "$HOST" -p "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$ROOT/mlruns/mlflow.db" \
    --default-artifact-root "$ROOT/mlruns/artifacts" &
pids+=($!)

stop() {
    trap - INT TERM
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

echo "Dagster UI: http://$HOST:$DAGSTER_PORT   MLflow UI: http://$HOST:$MLFLOW_PORT   (Ctrl-C stops both)"
# Either server exiting on its own (a port in use, a broken definition) stops the other.
status=0
wait -n "${pids[@]}" || status=$?
stop
exit "$status"
