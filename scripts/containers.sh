#!/usr/bin/env bash
# The container stack of this checkout on one host, from nothing (CPU profile, no internet):
#
#   scripts/containers.sh up [--scale]   install Docker where missing, start dockerd if none runs,
#                                        build the images, start triton-cpu and orchestrator-cpu
#                                        (--scale: also the orchestrator replicas behind nginx)
#                                        and wait until every container is healthy
#   scripts/containers.sh build [--scale]   the images only
#   scripts/containers.sh down [--volumes] [--images]
#                                        remove the stack's containers and networks (and its
#                                        volumes, images); stop dockerd if this script started it
#   scripts/containers.sh status         the engine, the images and the stack's containers
#   scripts/containers.sh compose ARGS   docker compose on the stack (its files, profiles, project)
#   scripts/containers.sh install        install Docker, Compose, buildx and debootstrap where missing
#
# The model plane gets the real SCRFD detector from ../shared/models and contract twins, written
# into the models volume as local files (FACESWAP_DETECTOR=/models/own/... and the like): nothing is
# downloaded. A base image that cannot be pulled is stood in for by one built from Debian
# (scripts/standins/), once per set of inputs; the product's Dockerfiles only see it as a build
# argument. pip's CA bundle, where this machine has one, reaches the builds as a BuildKit secret.
#
# Environment: COMPOSE_PROJECT_NAME (default triton-faceswap-test); IMAGE_TAG (default: the tags
# in compose.yaml); the published ports ORCHESTRATOR_PORT, NGINX_PORT, TRITON_HTTP_PORT,
# TRITON_GRPC_PORT, TRITON_METRICS_PORT (compose.yaml, all on 127.0.0.1 by default); UP_TIMEOUT
# (seconds until healthy, default 600); SHARED_DIR (default ../shared beside the checkout).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=$root/.run/containers
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-triton-faceswap-test}
export SCALE_TRITON=triton-cpu # the replicas of the scale profile use the CPU Triton here
project_state=$state/$COMPOSE_PROJECT_NAME
shared=${SHARED_DIR:-$root/../shared}
detector=$shared/models/scrfd_2.5g_kps.onnx
up_timeout=${UP_TIMEOUT:-600}

say() { echo "containers: $*" >&2; }
fail() {
  echo "error: $*" >&2
  exit 1
}
log_tail() { grep -iE "error|denied|failed" "$1" | tail -n 1 || tail -n 1 "$1"; }

# --- The engine -------------------------------------------------------------------------------

install_tools() {
  local missing=()
  command -v dockerd >/dev/null && command -v docker >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} (Debian)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    { $sudo apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$state/apt.log" 2>&1 || fail "cannot install ${missing[*]}: $(log_tail "$state/apt.log")"
  fi
  if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
    "$root/scripts/install_trixie_tools.sh" >&2
  fi
}

engine_running() { timeout 20 docker info >/dev/null 2>&1; }

start_engine() {
  engine_running && return
  command -v dockerd >/dev/null || fail "no Docker engine: dockerd is not installed"
  say "starting dockerd (log: $state/dockerd.log)"
  setsid dockerd >"$state/dockerd.log" 2>&1 </dev/null &
  echo $! >"$state/dockerd.pid"
  started_engine=1
  for _ in $(seq 60); do
    engine_running && return
    kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null || break
    sleep 1
  done
  if engine_running; then # another dockerd came up meanwhile: use it
    rm -f "$state/dockerd.pid"
    return
  fi
  stop_engine
  fail "dockerd did not start: $(log_tail "$state/dockerd.log")"
}

# Stops the dockerd this script started, unless containers of others run on it.
stop_engine() {
  [ -f "$state/dockerd.pid" ] || return 0
  local pid
  pid=$(cat "$state/dockerd.pid")
  if ! kill -0 "$pid" 2>/dev/null || ! grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
    rm -f "$state/dockerd.pid"
    return 0
  fi
  if engine_running && [ -n "$(docker ps -q)" ]; then
    say "dockerd (pid $pid) keeps running: other containers use it"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  rm -f "$state/dockerd.pid"
  say "stopped dockerd (pid $pid)"
}

# --- Base images ------------------------------------------------------------------------------

# The default of `ARG NAME=...` in a Dockerfile: the real public image.
default_base() { sed -n "s/^ARG $2=//p" "$root/$1" | head -n 1; }

# What makes debian:bookworm-slim (the base of python:*-slim-bookworm) slim: no documentation,
# manuals or translations, and apt keeps no package files or caches in the image.
slim() {
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
    'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/lintian/overrides/*' >"$1/etc/dpkg/dpkg.cfg.d/docker"
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"'
  printf '%s\n' "DPkg::Post-Invoke { $clean; };" "APT::Update::Post-Invoke { $clean; };" \
    'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$1/etc/apt/apt.conf.d/docker-clean"
  echo 'Acquire::Languages "none";' >"$1/etc/apt/apt.conf.d/docker-no-languages"
  find "$1/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  rm -rf "$1"/usr/share/{man,info,locale,groff,lintian}/* "$1"/var/cache/apt/archives/*.deb \
    "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/*
}

debian_base() {
  local mirror key image rootfs
  # shellcheck disable=SC2016 # $(REPO_URI) is apt's field name, not a shell expansion
  mirror=$(apt-get indextargets --format '$(REPO_URI)' "Release: bookworm" | head -n 1)
  # shellcheck disable=SC2016
  [ -n "$mirror" ] || mirror=$(apt-get indextargets --format '$(REPO_URI)' "Origin: Debian" | grep -v security | head -n 1)
  [ -n "$mirror" ] || fail "no Debian mirror in this machine's apt sources to build base images from"
  key=$( (echo "debootstrap --variant=minbase bookworm $mirror"; declare -f slim) | sha256sum | cut -c1-12)
  image=triton-faceswap-standin/debian:bookworm-$key
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "making a Debian bookworm base with debootstrap (about a minute)"
    local started=$SECONDS
    rootfs=$(mktemp -d /var/tmp/standin-rootfs.XXXXXX)
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$state/debootstrap.log" 2>&1 ||
      { rm -rf "$rootfs"; fail "debootstrap failed: $(log_tail "$state/debootstrap.log")"; }
    slim "$rootfs"
    tar -C "$rootfs" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$image" >/dev/null
    rm -rf "$rootfs"
    say "made $image in $((SECONDS - started)) s"
  fi
  echo "$image"
}

# The image to build FROM for a base: the real one where it is here or can be pulled, else a
# stand-in from scripts/standins/NAME.Dockerfile on Debian, tagged by the hash of its inputs.
base_image() {
  local real=$1 name=$2 debian key image
  if docker image inspect "$real" >/dev/null 2>&1 || timeout 120 docker pull -q "$real" >/dev/null 2>&1; then
    echo "$real"
    return
  fi
  debian=$(debian_base)
  key=$( (echo "$debian"; cat "$root/scripts/standins/$name.Dockerfile") | sha256sum | cut -c1-12)
  image=triton-faceswap-standin/$name:$key
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "$real cannot be pulled here: building a stand-in from Debian"
    local started=$SECONDS
    DOCKER_BUILDKIT=1 docker build -q --build-arg "DEBIAN_IMAGE=$debian" -t "$image" \
      -f "$root/scripts/standins/$name.Dockerfile" "$root/scripts/standins" >"$state/standin-$name.log" 2>&1 ||
      fail "the stand-in for $real failed to build: $(log_tail "$state/standin-$name.log")"
    say "built $image in $((SECONDS - started)) s"
  fi
  echo "$image"
}

# --- The stack --------------------------------------------------------------------------------

profiles() {
  echo --profile cpu
  [ "$scale" = 0 ] || echo --profile scale
}

services() {
  echo triton-cpu orchestrator-cpu
  [ "$scale" = 0 ] || echo orchestrator-replica nginx
}

# The stack's own settings over compose.yaml: the models as local files in the volume (the names
# modelplane.twins.write_twins gives them), and the image tags when IMAGE_TAG is set.
write_override() {
  mkdir -p "$project_state"
  docker compose -f "$root/compose.yaml" --profile cpu --profile scale config --format json |
    IMAGE_TAG=${IMAGE_TAG:-} python3 -c 'import json, os, sys
tag = os.environ["IMAGE_TAG"]
services = {
    name: {"image": service["image"].rsplit(":", 1)[0] + ":" + tag}
    for name, service in json.load(sys.stdin)["services"].items()
    if tag and "build" in service
}
models = {"detector": "detector.onnx"} | {role: role + "_twin.onnx" for role in ("recognizer", "swapper", "enhancer")}
services.setdefault("triton-cpu", {})["environment"] = {
    "FACESWAP_" + role.upper(): "/models/own/" + file for role, file in models.items()
}
json.dump({"services": services}, sys.stdout, indent=2)' >"$project_state/compose.override.yaml" ||
    fail "cannot read compose.yaml (docker compose config)"
}

compose() {
  local files=(-f "$root/compose.yaml")
  [ ! -f "$project_state/compose.override.yaml" ] || files+=(-f "$project_state/compose.override.yaml")
  docker compose --project-directory "$root" "${files[@]}" --profile cpu --profile scale "$@"
}

# image dockerfile, for each image the chosen services run
images() {
  # shellcheck disable=SC2046
  compose config --format json $(services) | python3 -c 'import json, sys
wanted = sys.argv[1:]
seen = set()
for name, service in json.load(sys.stdin)["services"].items():
    if name in wanted and "build" in service and service["image"] not in seen:
        seen.add(service["image"])
        print(service["image"], service["build"]["dockerfile"])' $(services)
}

pip_ca() {
  local file=${PIP_CERT:-}
  if [ -z "$file" ] && command -v python3 >/dev/null; then
    file=$(python3 -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'$/\1/p" | tail -n 1)
  fi
  [ -z "$file" ] || [ -f "$file" ] || fail "pip's CA bundle $file does not exist"
  echo "$file"
}

build() {
  local ca python_base nginx_base image dockerfile name started
  ca=$(pip_ca)
  python_base=$(base_image "$(default_base docker/orchestrator.Dockerfile PYTHON_IMAGE)" python)
  args=(--build-arg "PYTHON_IMAGE=$python_base")
  if [ "$scale" = 1 ]; then
    nginx_base=$(base_image "$(default_base docker/nginx.Dockerfile NGINX_IMAGE)" nginx)
    args+=(--build-arg "NGINX_IMAGE=$nginx_base")
  fi
  if [ -n "$ca" ]; then
    args+=(--secret "id=pip_ca,src=$ca")
    say "pip's CA bundle $ca goes to the builds as a secret"
  fi
  local pids=() names=()
  while read -r image dockerfile; do
    name=$(basename "$dockerfile" .Dockerfile)
    (
      started=$(date +%s)
      DOCKER_BUILDKIT=1 docker build --progress=plain "${args[@]}" -t "$image" -f "$root/$dockerfile" "$root" \
        >"$project_state/build-$name.log" 2>&1 || exit 1
      size=$(docker image inspect -f '{{.Size}}' "$image")
      say "built $image in $(($(date +%s) - started)) s, $((size / 1000000)) MB"
    ) &
    pids+=($!)
    names+=("$name")
  done < <(images)
  local failed=()
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
  done
  for name in "${failed[@]}"; do
    fail "the $name image failed to build: $(log_tail "$project_state/build-$name.log") (log: $project_state/build-$name.log)"
  done
}

# service variable default: the ports the stack publishes on 127.0.0.1
published() {
  echo orchestrator-cpu ORCHESTRATOR_PORT 8080
  echo triton-cpu TRITON_HTTP_PORT 8000
  echo triton-cpu TRITON_GRPC_PORT 8001
  echo triton-cpu TRITON_METRICS_PORT 8002
  [ "$scale" = 0 ] || echo nginx NGINX_PORT 8081
}

check_ports() {
  local service name default port
  while read -r service name default; do
    port=${!name:-$default}
    if [ -z "$(compose ps -q "$service")" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      fail "port $port on 127.0.0.1 is in use: stop what listens there or set $name to another port"
    fi
  done < <(published)
}

# The detector and the twins, as a user would put own models into the volume.
seed_models() {
  [ -f "$detector" ] || fail "the real SCRFD detector is expected at $detector (../shared beside the checkout)"
  compose run --rm --no-deps -T --entrypoint python3 -e PYTHONPATH=/opt/faceswap \
    -v "$(dirname "$detector"):/shared:ro" triton-cpu -c "
import pathlib
from modelplane.twins import write_twins
own = pathlib.Path('/models/own')
if not (own / 'swapper_twin.onnx').is_file():
    write_twins(own, pathlib.Path('/shared/$(basename "$detector")'))
" >"$project_state/seed.log" 2>&1 || fail "cannot put the models into the volume: $(log_tail "$project_state/seed.log")"
}

# The first service that is not healthy (one never started only if no other), with its last error.
unhealthy_cause() {
  local candidate health service="" state="" waiting=""
  while read -r candidate health; do
    case $health in
      healthy | running) ;;
      created) waiting=${waiting:-"$candidate $health"} ;;
      *)
        service=$candidate state=$health
        break
        ;;
    esac
  done < <(compose ps -a --format '{{.Service}} {{if and (eq .State "running") .Health}}{{.Health}}{{else}}{{.State}}{{end}}')
  [ -n "$service" ] || read -r service state <<<"$waiting"
  [ -n "$service" ] || { echo "compose gave up (see $project_state/up.log)"; return; }
  local logs # from docker: compose 2.26 starts every line of its logs with a terminal control sequence
  logs=$(docker logs --tail 200 "$(compose ps -a -q "$service" | head -n 1)" 2>&1)
  echo "$service is $state: $(grep "^error:" <<<"$logs" | tail -n 1 || grep -i error <<<"$logs" | tail -n 1 || true)"
}

up() {
  local started
  check_ports
  build
  seed_models
  started=$(date +%s)
  # shellcheck disable=SC2046
  if ! compose up --detach --no-build --wait --wait-timeout "$up_timeout" $(services) \
    >"$project_state/up.log" 2>&1; then
    fail "the stack did not turn healthy (gave up after $(($(date +%s) - started)) s of at most $up_timeout): $(unhealthy_cause)"
  fi
  say "healthy $(($(date +%s) - started)) s after up: orchestrator on http://127.0.0.1:${ORCHESTRATOR_PORT:-8080}$(
    [ "$scale" = 0 ] || echo ", nginx on http://127.0.0.1:${NGINX_PORT:-8081}")"
}

down() {
  local flags=(--remove-orphans)
  for arg in "$@"; do
    case $arg in
      --volumes) flags+=(--volumes) ;;
      --images) flags+=(--rmi all) ;;
      *) fail "down takes --volumes and --images, not $arg" ;;
    esac
  done
  if engine_running; then
    compose down "${flags[@]}" >"$project_state/down.log" 2>&1 ||
      fail "docker compose down failed: $(log_tail "$project_state/down.log")"
  fi
  stop_engine
}

status() {
  if ! engine_running; then
    echo "engine: not running"
    return
  fi
  echo "engine: Docker $(docker version -f '{{.Server.Version}}')$(
    [ -f "$state/dockerd.pid" ] && echo ", dockerd pid $(cat "$state/dockerd.pid") started by this script")"
  local image dockerfile
  while read -r image dockerfile; do
    echo "image: $image ($dockerfile): $(docker image inspect -f '{{.Size}}' "$image" 2>/dev/null |
      awk '{printf "%d MB", $1 / 1000000}' || true)"
  done < <(images)
  compose ps -a
}

command=${1:-}
shift || true
scale=0
if [ "$command" = up ] || [ "$command" = build ]; then
  for arg in "$@"; do
    [ "$arg" = --scale ] || fail "$command takes --scale only, not $arg"
    scale=1
  done
fi
mkdir -p "$project_state"
# A failed up or build leaves nothing running: the stack's containers go, and so does the dockerd
# that this run started.
started_engine=0
on_exit() {
  local status=$?
  if [ "$status" != 0 ]; then
    if engine_running; then compose down --remove-orphans >/dev/null 2>&1 || true; fi
    [ "$started_engine" = 0 ] || stop_engine
  fi
  exit "$status"
}

case $command in
  up | build)
    trap on_exit EXIT
    install_tools
    start_engine
    write_override
    "$command"
    ;;
  install) install_tools ;;
  down) down "$@" ;;
  status) status ;;
  compose) compose "$@" ;;
  *)
    [ -z "$command" ] || echo "error: no command '$command'; the commands are:" >&2
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
