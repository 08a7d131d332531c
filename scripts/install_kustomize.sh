#!/usr/bin/env bash
# Installs kustomize, which renders deploy/kubernetes/ in the tests, from Debian 13 (trixie): bookworm
# has none. trixie is added at a low pin priority, so nothing else comes from it. Safe to rerun.
set -euo pipefail

version=5.6.0
# Debian's build says "(devel)" to `kustomize version`: the package's version is the one to check.
installed() { dpkg-query -W -f='${Version}' kustomize 2>/dev/null || true; }
if [[ "$(installed)" == "$version+ds-"* ]]; then
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

echo "setup: installing kustomize $version from Debian trixie"
# shellcheck disable=SC2016
if ! apt-get indextargets --format '$(RELEASE)' | grep -qx trixie; then
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg |
    $sudo tee /etc/apt/sources.list.d/trixie.sources >/dev/null
fi
printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n\nPackage: kustomize\nPin: version %s+ds-*\nPin-Priority: 500\n' \
  "$version" | $sudo tee /etc/apt/preferences.d/trixie-kustomize >/dev/null
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends kustomize >/dev/null

if [[ "$(installed)" != "$version+ds-"* ]]; then
  echo "error: Debian trixie's kustomize is $(installed), not $version: update the pins" >&2
  exit 1
fi
