#!/usr/bin/env bash
# perf_analyzer against every model and ensemble on the local Triton; results into docs/benchmarks.md.
#
#   scripts/bench_models.sh [--twins]        (arguments after -- go to scripts/bench_models.py)
#
# Starts the local server (scripts/triton_local.sh) unless one is already running, and stops it
# afterwards if it started it. Needs nothing but this repository and, without --twins, the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
server_args=() bench_args=()
while (($#)); do
  case $1 in
    --) shift; bench_args=("$@"); break ;;
    *) server_args+=("$1"); shift ;;
  esac
done
if [[ " ${server_args[*]-} " == *" --twins "* && -f ../shared/models/scrfd_2.5g_kps.onnx ]]; then
  server_args+=(--detector ../shared/models/scrfd_2.5g_kps.onnx)
fi
started=no
if [[ "$(scripts/triton_local.sh status)" == stopped ]]; then
  scripts/triton_local.sh start "${server_args[@]}" >/dev/null
  started=yes
fi
trap '[[ $started == yes ]] && scripts/triton_local.sh stop >/dev/null' EXIT
.venv/bin/python -m scripts.bench_models --command "scripts/bench_models.sh ${server_args[*]-}" "${bench_args[@]}"
