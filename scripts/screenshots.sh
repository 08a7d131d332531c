#!/usr/bin/env bash
# The README's screenshots of the web pages (docs/web-page.png, docs/live-page.png), taken by the
# browser tests that check those pages against the real service and Triton, so they show the pages
# as they are: every option the API has, a finished job, a live stream.
#
#   scripts/screenshots.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
FACESWAP_SCREENSHOT_DIR=docs exec .venv/bin/python -m pytest tests/test_web.py -q \
  -k "before_and_after_differing or live_page_swaps_the_fake_camera" "$@"
