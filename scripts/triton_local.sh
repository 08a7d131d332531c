#!/usr/bin/env bash
# A local Triton Inference Server on loopback, serving the CPU rendering of model_repository/.
#
#   scripts/triton_local.sh start [--twins] [--detector PATH] [--repository DIR]
#       installs the server runtime if missing, prepares the repository if it is not (fetching the
#       manifest's models, or contract twins with --twins), starts tritonserver, waits until ready
#   scripts/triton_local.sh stop | status
#
# Ports: TRITON_HTTP_PORT (default 8000), TRITON_GRPC_PORT (8001), TRITON_METRICS_PORT (8002);
# TRITON_STATE_DIR (default .run/triton-GRPC_PORT, one per server) holds its pid file and log.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m modelplane server "$@"
