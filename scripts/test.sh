#!/usr/bin/env bash
# Runs the test suite after installing what it needs (Debian packages, both environments).
# Extra arguments go to pytest, e.g. scripts/test.sh -k fetch -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
