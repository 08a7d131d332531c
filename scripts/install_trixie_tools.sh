#!/usr/bin/env bash
# Installs the tools the deployment tests need from Debian 13 (trixie), which bookworm lacks:
# kustomize renders deploy/kubernetes/, promtool evaluates the autoscaler's PromQL, Compose v2 and
# buildx run the containers (scripts/containers.sh). trixie is added at a low pin priority, so
# nothing else comes from it. Safe to rerun.
set -euo pipefail

# package=upstream version (any Debian revision of it)
tools=(kustomize=5.6.0 promtool=2.53.3 docker-compose=2.26.1 docker-buildx=0.13.1)

installed() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
missing=()
for tool in "${tools[@]}"; do
  [[ "$(installed "${tool%=*}")" == "${tool#*=}"[+-]* ]] || missing+=("$tool")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo

# The mirror this machine already uses for its own release.
codename=$(sed -n "s/^VERSION_CODENAME=//p" /etc/os-release)
# shellcheck disable=SC2016 # $(REPO_URI) is apt's field name, not a shell expansion
mirror=$(apt-get indextargets --format '$(REPO_URI)' "Release: $codename" | head -n 1)
if [ -z "$mirror" ]; then
  echo "error: no Debian mirror for $codename in this machine's apt sources" >&2
  exit 1
fi

echo "setup: installing ${missing[*]} from Debian trixie"
# shellcheck disable=SC2016
if ! apt-get indextargets --format '$(RELEASE)' | grep -qx trixie; then
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg |
    $sudo tee /etc/apt/sources.list.d/trixie.sources >/dev/null
fi
{
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n'
  for tool in "${tools[@]}"; do
    version=${tool#*=}
    printf '\nPackage: %s\nPin: version /^%s[+-]/\nPin-Priority: 500\n' "${tool%=*}" "${version//./\\.}"
  done
} | $sudo tee /etc/apt/preferences.d/trixie-tools >/dev/null
$sudo rm -f /etc/apt/preferences.d/trixie-kustomize # an earlier name of this file
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]%=*}" >/dev/null

for tool in "${missing[@]}"; do
  if [[ "$(installed "${tool%=*}")" != "${tool#*=}"[+-]* ]]; then
    echo "error: Debian trixie's ${tool%=*} is $(installed "${tool%=*}"), not ${tool#*=}: update the pins" >&2
    exit 1
  fi
done
