#!/usr/bin/env bash
# Prepares this machine for the project: Debian packages, the application environment (.venv) and
# the Triton server environment (.triton-env). Safe to rerun: it only does what is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# chromium and a font: the browser tests (Playwright drives this Chromium; it never downloads one).
# postgresql and nginx: the job store and multi-replica tests start their own servers.
packages=(ffmpeg libb64-0d "libpython${version}" espeak-ng sox curl chromium fonts-dejavu-core postgresql nginx)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
scripts/install_trixie_tools.sh

# make_env DIR INPUT-FILE PIP-INSTALL-ARGS...: (re)create a virtual environment when its input changed.
make_env() {
  local dir=$1 input=$2; shift 2
  local want
  want=$( (echo "$version $*"; cat "$input") | sha256sum | cut -c1-16)
  if [ -f "$dir/.setup-stamp" ] && [ "$(cat "$dir/.setup-stamp")" = "$want" ]; then
    return
  fi
  echo "setup: building $dir (a few minutes on a new machine)"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored" || true; }
  echo "$want" > "$dir/.setup-stamp"
}

make_env .venv pyproject.toml -e ".[test]"
make_env .triton-env requirements/triton-server.txt -r requirements/triton-server.txt
