#!/usr/bin/env bash
# The container stack of this checkout on one host, from nothing (CPU profile, no internet):
#
#   scripts/containers.sh up [--scale]   install Docker where missing, start dockerd if none runs,
#                                        build the images, start triton-cpu and orchestrator-cpu
#                                        (--scale: also postgres and the orchestrator replicas
#                                        behind nginx) and wait until every container is healthy
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
# downloaded. A public image that cannot be pulled (a base image, postgres) is stood in for by one
# built from Debian (scripts/standins/), once per set of inputs; the product's Dockerfiles only see
# it as a build argument. pip's CA bundle, where this machine has one, reaches the builds as a
# BuildKit secret. The stack's own settings (models, image tags, the stand-in postgres, a generated
# database password) are in an override file of its own under .run/containers/PROJECT/.
# When up or build fails, one `error:` line names the cause and nothing is left running.
#
# Environment: COMPOSE_PROJECT_NAME (default triton-faceswap-test); IMAGE_TAG (default: the tags
# in compose.yaml); the published ports ORCHESTRATOR_PORT, NGINX_PORT, TRITON_HTTP_PORT,
# TRITON_GRPC_PORT, TRITON_METRICS_PORT (compose.yaml, all on 127.0.0.1 by default); UP_TIMEOUT
# (seconds until healthy, default 600); SHARED_DIR (default ../shared beside the checkout).
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) ends the script too

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
state=$root/.run/containers
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-triton-faceswap-test}
export SCALE_TRITON=triton-cpu # the replicas of the scale profile use the CPU Triton here
project_state=$state/$COMPOSE_PROJECT_NAME
override=$project_state/compose.override.yaml
shared=${SHARED_DIR:-$root/../shared}
detector=$shared/models/scrfd_2.5g_kps.onnx
up_timeout=${UP_TIMEOUT:-600}

say() { echo "containers: $*" >&2; }
fail() {
  echo "error: $*" >&2
  exit 1
}
# The line of a log that says what went wrong: its last error, else its last line.
log_tail() { grep -iE "error|denied|failed" "$1" | tail -n 1 || tail -n 1 "$1"; }
# What a failed `docker build --progress=plain` step printed last as its error (apt's E:, pip's
# ERROR:), without BuildKit's step prefix; else BuildKit's own summary.
build_error() {
  grep -v "failed to solve" "$1" | sed -E 's/^(#[0-9]+ )?[0-9]+\.[0-9]+ //' |
    grep -E "^(E:|ERROR:|error:)" | tail -n 1 || log_tail "$1"
}

# --- The engine -------------------------------------------------------------------------------

engine_running() { command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; }

apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  say "installing $* (Debian)"
  { $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"; } \
    >"$state/apt.log" 2>&1 || fail "cannot install $*: $(log_tail "$state/apt.log")"
}

install_tools() {
  local engine=1 missing=()
  command -v docker >/dev/null && { command -v dockerd >/dev/null || engine_running; } || engine=0
  [ "$engine" = 1 ] || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap) # for stand-ins only
  if ((${#missing[@]})); then
    if command -v apt-get >/dev/null; then
      apt_install "${missing[@]}"
    elif [ "$engine" = 0 ]; then
      fail "no Docker engine: docker is not installed and this host has no apt-get for Debian's docker.io; install Docker Engine with Compose v2 and buildx"
    fi
  fi
  if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
    command -v apt-get >/dev/null || fail "docker compose (v2) or docker buildx is missing: install Docker's Compose and buildx plugins"
    "$root/scripts/install_trixie_tools.sh" >&2
  fi
}

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
    started_engine=0
    return
  fi
  stop_engine
  fail "no Docker engine: dockerd did not start: $(log_tail "$state/dockerd.log")"
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

# --- Public images and their stand-ins --------------------------------------------------------

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

# A minimal Debian image of one suite, made with debootstrap from this machine's Debian mirror.
debian_base() {
  local suite=$1 mirror script key image rootfs
  command -v debootstrap >/dev/null || fail "debootstrap is not installed: it makes the stand-in images"
  # shellcheck disable=SC2016 # $(REPO_URI) is apt's field name, not a shell expansion
  mirror=$(apt-get indextargets --format '$(REPO_URI)' "Origin: Debian" "Label: Debian" | head -n 1)
  [ -n "$mirror" ] || fail "no Debian mirror in this machine's apt sources to build base images from"
  script=/usr/share/debootstrap/scripts/$suite
  [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid # a suite newer than this debootstrap
  key=$( (echo "debootstrap --variant=minbase $suite $mirror"; declare -f slim) | sha256sum | cut -c1-12)
  image=triton-faceswap-standin/debian:$suite-$key
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "making a Debian $suite base with debootstrap (about a minute)"
    local started=$SECONDS
    rootfs=$(mktemp -d /var/tmp/standin-rootfs.XXXXXX)
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" "$script" >"$state/debootstrap-$suite.log" 2>&1 ||
      { rm -rf "$rootfs"; fail "debootstrap $suite failed: $(log_tail "$state/debootstrap-$suite.log")"; }
    slim "$rootfs"
    tar -C "$rootfs" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["bash"]' - "$image" >/dev/null
    rm -rf "$rootfs"
    say "made $image in $((SECONDS - started)) s"
  fi
  echo "$image"
}

# The image to use for a public one: the real one where it is here or can be pulled, else a
# stand-in from scripts/standins/NAME.Dockerfile on the Debian suite that file names, tagged by the
# hash of its inputs.
public_image() {
  local real=$1 name=$2 dockerfile=$root/scripts/standins/$2.Dockerfile debian key image file
  local inputs=("$dockerfile")
  for file in "$root/scripts/standins/$name"-*; do [ ! -e "$file" ] || inputs+=("$file"); done
  if docker image inspect "$real" >/dev/null 2>&1 || timeout 120 docker pull -q "$real" >/dev/null 2>&1; then
    echo "$real"
    return
  fi
  debian=$(debian_base "$(sed -n 's/^# Debian suite: //p' "$dockerfile")")
  key=$( (echo "$debian"; cat "${inputs[@]}") | sha256sum | cut -c1-12)
  image=triton-faceswap-standin/$name:$key
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "$real cannot be pulled here: building a stand-in from Debian"
    local started=$SECONDS
    DOCKER_BUILDKIT=1 docker build --progress=plain --build-arg "DEBIAN_IMAGE=$debian" -t "$image" \
      -f "$dockerfile" "$root/scripts/standins" >"$state/standin-$name.log" 2>&1 ||
      fail "the stand-in for $real failed to build: $(build_error "$state/standin-$name.log")"
    say "built $image in $((SECONDS - started)) s"
  fi
  echo "$image"
}

# --- The stack --------------------------------------------------------------------------------

services() {
  echo triton-cpu orchestrator-cpu
  [ "$scale" = 0 ] || echo postgres orchestrator-replica nginx
}

compose() {
  local files=(-f "$root/compose.yaml")
  [ ! -f "$override" ] || files+=(-f "$override") # none before the first up or build
  docker compose --project-directory "$root" "${files[@]}" --profile cpu --profile scale "$@"
}

# The public images the chosen services need: the Python base, and nginx's base and postgres for
# the scale profile.
resolve_images() {
  python_base=$(public_image "$(default_base docker/orchestrator.Dockerfile PYTHON_IMAGE)" python)
  nginx_base="" postgres_image=""
  [ "$scale" = 1 ] || return 0
  nginx_base=$(public_image "$(default_base docker/nginx.Dockerfile NGINX_IMAGE)" nginx)
  postgres_image=$(public_image "$(docker compose -f "$root/compose.yaml" --profile scale config --images postgres)" postgres)
}

# The stack's own settings over compose.yaml: the models as local files in the volume (the names
# modelplane.twins.write_twins gives them), the image tags when IMAGE_TAG is set, the postgres image
# where a stand-in replaces it, and a database password of the stack's own.
write_override() {
  local password=$project_state/postgres-password
  [ -s "$password" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$password")
  docker compose -f "$root/compose.yaml" --profile cpu --profile scale config --format json |
    IMAGE_TAG=${IMAGE_TAG:-} POSTGRES_IMAGE=$postgres_image PASSWORD=$(cat "$password") python3 -c 'import json, os, sys
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
services["postgres"] = {"environment": {"POSTGRES_PASSWORD": os.environ["PASSWORD"]}}
if os.environ["POSTGRES_IMAGE"]:
    services["postgres"]["image"] = os.environ["POSTGRES_IMAGE"]
services.setdefault("orchestrator-replica", {})["environment"] = {"PGPASSWORD": os.environ["PASSWORD"]}
json.dump({"services": services}, sys.stdout, indent=2)' >"$override.new" ||
    fail "cannot read compose.yaml (docker compose config)"
  mv "$override.new" "$override"
}

# image dockerfile, for each image the chosen services build
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

build_images() {
  local ca image dockerfile name list args=(--build-arg "PYTHON_IMAGE=$python_base")
  [ -z "$nginx_base" ] || args+=(--build-arg "NGINX_IMAGE=$nginx_base")
  ca=$(pip_ca)
  if [ -n "$ca" ]; then
    args+=(--secret "id=pip_ca,src=$ca")
    say "pip's CA bundle $ca goes to the builds as a secret"
  fi
  list=$(images)
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
  done <<<"$list"
  local failed=()
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed+=("${names[$i]}")
  done
  for name in "${failed[@]}"; do
    fail "the $name image failed to build: $(build_error "$project_state/build-$name.log") (log: $project_state/build-$name.log)"
  done
}

build() {
  resolve_images
  write_override
  build_images
}

# service variable default: the ports the stack publishes on 127.0.0.1
published() {
  echo orchestrator-cpu ORCHESTRATOR_PORT 8080
  echo triton-cpu TRITON_HTTP_PORT 8000
  echo triton-cpu TRITON_GRPC_PORT 8001
  echo triton-cpu TRITON_METRICS_PORT 8002
  [ "$scale" = 0 ] || echo nginx NGINX_PORT 8081
}

# A port is free, or its service of this stack already runs and holds it.
check_ports() {
  local service name default port
  while read -r service name default; do
    port=${!name:-$default}
    if [ -z "$(compose ps -q --status running "$service" 2>/dev/null)" ] &&
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
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

# Why the stack is not healthy: the container that fails worst (one that exited or keeps
# restarting, then an unhealthy one, then one still starting, then one never started), with the
# last error its log holds; compose's own error where every container is fine.
unhealthy_cause() {
  local id service status health restarts code rank best=9 cause="" logs line what
  for id in $(compose ps -a -q); do
    read -r service status health restarts code < <(docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.RestartCount}} {{.State.ExitCode}}' "$id")
    case $status/$health in
      running/healthy | running/none) continue ;;
      exited/* | dead/*) rank=0 what="exited with code $code" ;;
      */unhealthy) rank=1 what="is unhealthy" ;;
      running/starting) rank=2 what="is still starting" ;;
      *) rank=3 what="was never started" ;;
    esac
    if ((restarts > 0)) || [ "$status" = restarting ]; then
      rank=0 what="keeps failing (restarted $restarts times)"
    fi
    ((rank < best)) || continue
    best=$rank
    logs=$(docker logs --tail 200 "$id" 2>&1) # compose 2.26 starts every line of its logs with a terminal control sequence
    line=$(grep "^error:" <<<"$logs" | tail -n 1 || grep -i error <<<"$logs" | tail -n 1 || tail -n 1 <<<"$logs")
    cause="$service $what${line:+: $line}"
  done
  if [ -z "$cause" ]; then
    cause=$(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$project_state/up.log" | grep -iE "error|failed" | tail -n 1 || true)
  fi
  echo "${cause:-see $project_state/up.log}"
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
  local flags=(--remove-orphans) volumes=0
  for arg in "$@"; do
    case $arg in
      --volumes)
        flags+=(--volumes)
        volumes=1
        ;;
      --images) flags+=(--rmi all) ;;
      *) fail "down takes --volumes and --images, not $arg" ;;
    esac
  done
  if engine_running; then
    compose down "${flags[@]}" >"$state/down-$COMPOSE_PROJECT_NAME.log" 2>&1 ||
      fail "docker compose down failed: $(log_tail "$state/down-$COMPOSE_PROJECT_NAME.log")"
    rm -f "$state/down-$COMPOSE_PROJECT_NAME.log"
    # The stack's settings go with its volumes (the database password belongs to the postgres volume).
    [ "$volumes" = 0 ] || rm -rf "$project_state"
  fi
  stop_engine
}

status() {
  local scale=1 # every image the script builds
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
mkdir -p "$state"
# A failed or interrupted up or build leaves nothing running: its builds stop, the stack's
# containers and networks go (its volumes stay), and so does the dockerd that this run started.
started_engine=0
on_exit() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$status" != 0 ]; then
    local job # the builds still running, and what they run (never the dockerd it started)
    for job in $(jobs -p); do
      [ "$job" = "$(cat "$state/dockerd.pid" 2>/dev/null)" ] || { pkill -TERM -P "$job" || true; kill "$job" 2>/dev/null || true; }
    done
    if engine_running; then compose down --remove-orphans >/dev/null 2>&1 || true; fi
    [ "$started_engine" = 0 ] || stop_engine
  fi
  exit "$status"
}

case $command in
  up | build)
    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    (umask 077 && mkdir -p "$project_state")
    install_tools
    start_engine
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
