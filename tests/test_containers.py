"""The containers for real: the images built, the compose stack up, swaps through it.

`scripts/containers.sh up` installs Docker where it is missing, builds the images (on stand-in
bases where the public ones cannot be pulled) and brings up compose.yaml's `cpu` profile, with the
real SCRFD detector and contract twins in the models volume; `up --scale` adds the `scale` profile
(postgres, three orchestrator replicas, nginx). The tests then use the stack as a user would: HTTP
and WebSocket on the published loopback ports, `docker compose` for restarts and logs, `docker` for
what is inside the images. Each stack has a project name, ports and image tags of its own; every
stack the module made goes down with its volumes however the tests end, and so does the dockerd
the script started for them. Marked `containers`: `-m "not containers"` runs the rest without them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from modelplane.local_server import free_port
from orchestrator.api.live_protocol import CLOSE_FORBIDDEN
from tests.helpers.clips import frame_count, moving_photo, video_size
from tests.helpers.live import camera_frame, closing, decode, face_boxes, face_change, jpeg, opening
from tests.helpers.paths import ROOT, SCRFD, SHARED, TWO_FACES
from tests.helpers.reference import scrfd_paste_areas
from tests.helpers.service import PHOTO, create_job, upload, wait_job

# The first test builds the images: minutes on a machine that has none cached.
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

SCRIPT = ROOT / "scripts" / "containers.sh"
STATE = ROOT / ".run" / "containers"
SERVICES = ("triton-cpu", "orchestrator-cpu")
REPLICAS = 3
UID = "10001"
FAST = {"preset": "ultrafast"}
PORTS = ("ORCHESTRATOR_PORT", "NGINX_PORT", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")
# Files the build context holds that .dockerignore must keep out of every image.
SENTINELS = ("modelplane/dockerignore-sentinel.onnx", "modelplane/dockerignore-sentinel.pem")


@dataclass
class Stack:
    """One stack: scripts/containers.sh (of `root`, a checkout) and docker compose with its settings."""

    env: dict[str, str]
    root: Path = ROOT
    up_log: str = ""  # what `scripts/containers.sh up` said
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url("ORCHESTRATOR_PORT"), timeout=120)

    @property
    def project(self) -> str:
        return self.env["COMPOSE_PROJECT_NAME"]

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.env[port]}"

    def script(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.root / "scripts" / "containers.sh"), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def compose(self, *args: str, timeout: float = 300) -> str:
        result = self.script("compose", *args, timeout=timeout)
        assert result.returncode == 0, f"compose {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).split()

    def container(self, service: str) -> str:
        (container,) = self.containers(service)
        return container

    def exec(self, service: str, *command: str) -> str:
        return self.compose("exec", "-T", service, *command)

    def health(self, service: str) -> str:
        return docker("inspect", "-f", "{{.State.Health.Status}}", self.container(service)).strip()

    def wait_healthy(self, service: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while (health := self.health(service)) != "healthy":
            assert time.monotonic() < deadline, f"{service} still {health}: {self.compose('logs', service)}"
            time.sleep(2)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the orchestrator's /readyz says ready."""
        deadline = time.monotonic() + timeout
        while (ready := self.http.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(1)

    def image(self, service: str) -> str:
        return json.loads(self.compose("config", "--format", "json"))["services"][service]["image"]

    def model_files(self) -> dict[str, str]:
        """path -> size and modification time of everything in /models/files and /models/repository."""
        listing = self.exec(
            "triton-cpu", "find", "/models/files", "/models/repository", "-printf", "%p %s %T@\\n"
        )
        return dict(line.split(" ", 1) for line in listing.splitlines())

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this stack that Docker still holds."""
        label = f"label=com.docker.compose.project={self.project}"
        return [
            f"{kind} {name}"
            for kind, listing in (
                ("container", ("ps", "-a", "--format", "{{.Names}}")),
                ("network", ("network", "ls", "--format", "{{.Name}}")),
                ("volume", ("volume", "ls", "--format", "{{.Name}}")),
            )
            for name in docker(*listing, "--filter", label).split()
        ]

    def down(self, *flags: str) -> None:
        self.http.close()
        result = self.script("down", "--volumes", *flags)
        assert result.returncode == 0, result.stderr


def docker(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def engine_running() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def stack_env(**overrides: str) -> dict[str, str]:
    """This process's environment for the script: a project, image tag and free ports of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESWAP_", "TRITON_", "COMPOSE_"))}
    name = f"faceswap-test-{uuid.uuid4().hex[:8]}"
    env.update(COMPOSE_PROJECT_NAME=name, IMAGE_TAG=name)
    env.update({port: str(free_port()) for port in PORTS})
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def installed() -> None:
    """Docker, Compose and buildx, installed by the script where they are missing."""
    result = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stacks(installed) -> Iterator[list[Stack]]:
    """Every stack the module starts (the main one first); all go down with their volumes at the
    end, whatever happened, the main one last with its images, which stops the dockerd the script
    started for them."""
    engine_before = engine_running()  # a dockerd.pid left by a killed run may name no process
    made: list[Stack] = []
    try:
        yield made
    finally:
        for stack in made[1:]:
            stack.down()
            assert not stack.leftovers(), stack.leftovers()
        if made:
            made[0].down("--images")
        if not engine_before:  # the script started dockerd for these tests: it is stopped again
            assert not (STATE / "dockerd.pid").exists() and not engine_running()
        elif made and engine_running():  # an engine the script did not start keeps running
            assert not made[0].leftovers(), made[0].leftovers()


@pytest.fixture(scope="module")
def stack(stacks) -> Iterator[Stack]:
    stack = Stack(stack_env())
    stacks.append(stack)
    sentinels = [ROOT / name for name in SENTINELS]
    try:
        for sentinel in sentinels:
            sentinel.write_text("kept out of every image by .dockerignore\n")
        result = stack.script("up", timeout=1500)
    finally:
        for sentinel in sentinels:
            sentinel.unlink(missing_ok=True)
    assert result.returncode == 0, result.stderr
    stack.up_log = result.stderr
    return stack


def other_stack(stacks: list[Stack], **env: str) -> Stack:
    """A second stack beside the main one, on its images; it goes down with the module's stacks."""
    stack = Stack(stack_env(IMAGE_TAG=stacks[0].env["IMAGE_TAG"], **env))
    stacks.append(stack)
    return stack


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The two-faces photo moving over a test pattern, 2 s at 10 frames a second, with a sine tone."""
    return moving_photo(tmp_path_factory.mktemp("clips") / "clip.mp4", size="320x240", seconds=2.0, rate=10)


def streams(path: Path) -> dict[str, dict]:
    """codec_type -> the first stream of that type, as ffprobe reports it."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found: dict[str, dict] = {}
    for stream in json.loads(result.stdout)["streams"]:
        found.setdefault(stream["codec_type"], stream)
    return found


def difference(result: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per pixel, the largest channel difference between two RGB pictures of one size."""
    return np.abs(result.astype(int) - original.astype(int)).max(axis=2)


def first_frame(path: Path) -> np.ndarray:
    result = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return np.asarray(Image.open(io.BytesIO(result.stdout)).convert("RGB"))


# --- the images and the running containers ----------------------------------------------------


def test_both_containers_turn_healthy_and_publish_on_loopback_only(stack):
    assert re.search(r"healthy \d+ s after up", stack.up_log), stack.up_log
    for service in SERVICES:
        assert stack.health(service) == "healthy"
        ports = json.loads(
            docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", stack.container(service))
        )
        bindings = [binding for published in ports.values() if published for binding in published]
        assert bindings and {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}, ports
    assert httpx.get(f"{stack.url('TRITON_HTTP_PORT')}/v2/health/ready", timeout=10).status_code == 200
    ready = stack.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text


def test_each_container_runs_as_its_non_root_user(stack):
    for service in SERVICES:
        assert docker("inspect", "-f", "{{.Config.User}}", stack.image(service)).strip() == f"{UID}:{UID}"
        status = stack.exec(service, "cat", "/proc/1/status")  # the process the engine started
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        assert uid and uid.groups() == (UID, UID), status
        assert stack.exec(service, "id", "-u").strip() == UID


def test_ffmpeg_works_in_the_orchestrator(stack):
    encode = "ffmpeg -nostdin -v error -f lavfi -i testsrc2=size=64x48:duration=0.4:rate=10 -f lavfi "
    encode += "-i sine=duration=0.4 -c:v libx264 -c:a aac -y /tmp/check.mp4"
    stack.exec("orchestrator-cpu", *encode.split())
    probed = json.loads(
        stack.exec(
            "orchestrator-cpu", "ffprobe", "-v", "error", "-show_streams", "-of", "json", "/tmp/check.mp4"
        )
    )
    assert sorted(stream["codec_name"] for stream in probed["streams"]) == ["aac", "h264"]


def _pem_bodies(text: str) -> set[str]:
    return {
        "".join(block.split())
        for block in re.findall(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S)
    }


def _layers(image: str) -> Iterator[tuple[str, bytes | None]]:
    """(path, content or None) of every entry of every layer of an image, from `docker save`."""
    with (
        subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save,
        tarfile.open(fileobj=save.stdout, mode="r|") as archive,
    ):
        for member in archive:
            if member.name.endswith("layer.tar"):
                with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as layer:
                    for entry in layer:
                        yield entry.name, layer.extractfile(entry).read() if entry.isfile() else None
    assert save.returncode == 0


def test_the_images_hold_nothing_the_dockerignore_keeps_out_nor_the_ca_bundle(stack):
    """Every layer of both images, as `docker save` writes them: no ignored file, no CA of this machine."""
    used = re.search(r"pip's CA bundle (\S+) goes to the builds as a secret", stack.up_log)
    assert used, f"no CA bundle was passed to the builds: {stack.up_log}"
    bundle = Path(used[1]).read_text()
    images = [stack.image(service) for service in SERVICES]
    own = _pem_bodies(stack.exec("triton-cpu", "cat", "/etc/ssl/certs/ca-certificates.crt"))
    # The certificates this machine adds to Debian's (its network's own CA): the secret to look for.
    machine = _pem_bodies(bundle) - own
    assert machine, "this machine's CA bundle adds no certificate to Debian's: nothing to look for"
    needles = {body[64:128].encode() for body in machine} | {base64.b64decode(body)[-64:] for body in machine}
    ignored_parts = {
        ".git",
        ".venv",
        ".triton-env",
        ".run",
        ".env",
        "outputs",
        ".pytest_cache",
        ".hypothesis",
    }
    sentinels = {Path(name).name for name in SENTINELS}
    for image in images:
        history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image)
        assert used[1] not in history and "BEGIN CERTIFICATE" not in history
        paths = []
        for path, content in _layers(image):
            paths.append(path)
            if content is not None:
                found = [needle for needle in needles if needle in content]
                assert not found, f"{image}: {path} holds this machine's CA certificate"
        assert len(paths) > 1000, image  # the layers were read
        for path in paths:
            parts = set(Path(path).parts)
            assert not parts & ignored_parts, f"{image}: {path}"
            assert Path(path).name not in sentinels, f"{image}: {path} came from the build context"
            if path.startswith("opt/faceswap/"):  # the project's files, copied from the context
                assert not re.search(r"\.(onnx|pem|key|pyc)$|__pycache__", path), f"{image}: {path}"


# --- swaps over HTTP ------------------------------------------------------------------------------


def test_image_swap_over_http(stack):
    response = stack.http.post("/v1/swap", files=upload(), data={"output_format": "png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-faces-found"] == "2" and response.headers["x-faces-swapped"] == "2"
    result = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    original = np.asarray(Image.open(TWO_FACES).convert("RGB"))
    assert result.shape == original.shape
    changed = difference(result, original)
    # The two faces changed, the rest of the photo did not (PNG: no recompression): nothing changed
    # outside where InsightFace's crops of the faces land, grown by 3 pixels.
    faces, areas = scrfd_paste_areas(np.ascontiguousarray(original[:, :, ::-1]), SCRFD)
    near = cv2.dilate(areas.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert faces == 2 and changed[~near].max() == 0
    assert (changed[areas] > 8).mean() > 0.2, (changed[areas] > 8).mean()


def test_video_job_with_audio(stack, clip, tmp_path):
    created = create_job(stack.http, upload(target=("clip.mp4", clip.read_bytes())), FAST)
    job = wait_job(stack.http, created["id"], timeout=300)
    assert job["kind"] == "video" and job["swapped"] > 0
    assert job["frames_done"] == job["frames_total"] == frame_count(clip)
    result = tmp_path / "result.mp4"
    result.write_bytes(stack.http.get(job["result_url"]).content)
    assert frame_count(result) == frame_count(clip) and video_size(result) == video_size(clip)
    given, got = streams(clip), streams(result)
    assert got["audio"]["codec_name"] == given["audio"]["codec_name"]
    assert abs(float(got["audio"]["duration"]) - float(given["audio"]["duration"])) < 0.1
    assert (difference(first_frame(result), first_frame(clip)) > 24).mean() > 0.005  # faces changed


# --- restarts -------------------------------------------------------------------------------------


def _queue_behind_busy_workers(stack: Stack, clip: Path) -> tuple[list[str], list[str]]:
    """Four video jobs on two workers: (all ids, those still queued), once two are running."""
    ids = [
        create_job(stack.http, upload(target=("clip.mp4", clip.read_bytes())), FAST)["id"] for _ in range(4)
    ]
    wait_job(stack.http, ids[1], ("running",), 120, fail_on=("failed",))
    queued = [i for i in ids if stack.http.get(f"/v1/jobs/{i}").json()["state"] == "queued"]
    assert queued, "every job ran before the restart"
    return ids, queued


def _results(stack: Stack, ids: list[str]) -> dict[str, bytes]:
    return {job_id: stack.http.get(f"/v1/jobs/{job_id}/result").content for job_id in ids}


def _assert_all_finish_after(stack: Stack, ids: list[str], queued: list[str], restarted: float) -> None:
    for job_id in ids:
        job = wait_job(stack.http, job_id, timeout=300)
        if job_id in queued:  # it waited through the restart and ran after it
            assert datetime.fromisoformat(job["started_at"]).timestamp() > restarted, job


def _logs(stack: Stack, service: str, *options: str) -> str:
    """`docker compose logs` of a service, without the terminal control sequences compose 2.26 adds."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stack.compose("logs", "--no-log-prefix", *options, service))


def _finished_job(stack: Stack) -> tuple[str, dict[str, bytes], dict[str, str]]:
    """A finished image job: its id, its result, and the model files as they are now."""
    finished = create_job(stack.http)["id"]
    wait_job(stack.http, finished)
    return finished, _results(stack, [finished]), stack.model_files()


def test_restart_keeps_jobs_results_and_models(stack, clip):
    finished, before_results, before_models = _finished_job(stack)
    ids, queued = _queue_behind_busy_workers(stack, clip)
    restarted = time.time()
    stack.compose("restart", "orchestrator-cpu", timeout=120)
    stack.wait_healthy("orchestrator-cpu")
    _assert_all_finish_after(stack, ids, queued, restarted)
    assert _results(stack, [finished]) == before_results

    moment = docker("info", "-f", "{{.SystemTime}}").strip()
    stack.compose("restart", "triton-cpu", timeout=120)
    stack.wait_healthy("triton-cpu")
    log = _logs(stack, "triton-cpu", "--since", moment)
    assert "/models/repository is up to date" in log and "wrote" not in log, log
    assert stack.model_files() == before_models  # neither copied nor prepared again
    stack.wait_ready()  # the orchestrator's gRPC channel reconnects by itself


def test_down_and_up_keep_jobs_results_and_models(stack, clip):
    finished, before_results, before_models = _finished_job(stack)
    ids, queued = _queue_behind_busy_workers(stack, clip)
    old = {service: stack.container(service) for service in SERVICES}

    stopped = time.time()
    stack.compose("down", timeout=180)  # no --volumes: the models and data volumes stay
    assert not stack.compose("ps", "-a", "-q").split()
    stack.compose("up", "--detach", "--no-build", "--wait", *SERVICES, timeout=600)
    assert all(stack.container(service) != old[service] for service in SERVICES)  # new containers

    log = _logs(stack, "triton-cpu")
    assert "/models/repository is up to date" in log and "wrote" not in log, log
    assert stack.model_files() == before_models
    _assert_all_finish_after(stack, ids, queued, stopped)
    assert _results(stack, [finished]) == before_results


def test_a_corrupt_model_is_refused_at_start_and_readyz_says_why(stack):
    swapper = "/models/own/swapper_twin.onnx"
    stack.exec(
        "triton-cpu",
        "sh",
        "-c",
        f"cp {swapper} /models/good.onnx && head -c 4096 /models/good.onnx > {swapper}",
    )
    try:
        moment = docker("info", "-f", "{{.SystemTime}}").strip()
        stack.compose("restart", "triton-cpu", timeout=120)
        deadline = time.monotonic() + 120
        while not re.search(r"^error:", log := _logs(stack, "triton-cpu", "--since", moment), re.M):
            assert time.monotonic() < deadline, log
            time.sleep(2)
        errors = [line for line in log.splitlines() if line.startswith("error:")]
        assert all(line == errors[0] for line in errors), log  # the same one line at each start
        assert errors[0].startswith("error: swapper: cannot read") and "as an ONNX model" in errors[0]
        assert "Traceback" not in log and "tritonserver not started" in log

        ready = stack.http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False, ready.text
        assert "triton-cpu:8001" in ready.json()["detail"], ready.text
        assert stack.http.get("/healthz").status_code == 200  # the orchestrator itself keeps running
    finally:
        # The refusing container restarts in a loop: repair the volume from a container of its own.
        stack.compose(
            "run", "--rm", "--no-deps", "-T", "--entrypoint", "mv", "triton-cpu", "/models/good.onnx", swapper
        )
    stack.compose("restart", "triton-cpu", timeout=120)
    stack.wait_healthy("triton-cpu")
    stack.wait_ready()


# --- the scale profile ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaled(stack) -> Stack:
    """The main stack with the scale profile added: postgres, the replicas and nginx."""
    result = stack.script("up", "--scale", timeout=900)
    assert result.returncode == 0, result.stderr
    return stack


@pytest.fixture(scope="module")
def nginx(scaled) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scaled.url("NGINX_PORT"), timeout=60) as client:
        yield client


def replica_get(container: str, path: str) -> str:
    """GET `path` on one replica itself, from inside its container (replicas publish no port)."""
    script = (
        f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080{path}').read().decode())"
    )
    return docker("exec", container, "python", "-c", script)


def request_counts(container: str, route: str) -> float:
    """faceswap_http_requests_total for GET `route` on one replica, read from its own /metrics."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(replica_get(container, "/metrics"))
        for sample in family.samples
        if sample.name == "faceswap_http_requests_total"
        and sample.labels["route"] == route
        and sample.labels["method"] == "GET"
    )


def test_scale_profile_comes_up_with_postgres_and_the_replicas_behind_nginx(scaled, nginx):
    assert len(scaled.containers("orchestrator-replica")) == REPLICAS
    for service in ("postgres", "orchestrator-replica", "nginx", *SERVICES):
        for container in scaled.containers(service):
            assert docker("inspect", "-f", "{{.State.Status}}", container).strip() == "running", service
    assert scaled.health("postgres") == "healthy"
    ready = nginx.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True, ready.text
    # A swap through nginx, a replica and the CPU Triton.
    swap = nginx.post("/v1/swap", files=upload(("target.jpg", PHOTO)))
    assert swap.status_code == 200 and swap.headers["x-faces-swapped"] == "2", swap.text


def test_the_replicas_keep_their_jobs_in_postgres(scaled, nginx):
    """A job queued through nginx is in the postgres service's database, and every replica reads it."""
    job = create_job(nginx)
    wait_job(nginx, job["id"])
    rows = scaled.exec(
        "postgres",
        "psql",
        "-U",
        "faceswap",
        "-d",
        "faceswap",
        "-tA",
        "-c",
        f"SELECT state FROM faceswap_jobs WHERE id = '{job['id']}'",
    )
    assert rows.split() == ["succeeded"]
    for replica in scaled.containers("orchestrator-replica"):
        assert json.loads(replica_get(replica, f"/v1/jobs/{job['id']}"))["state"] == "succeeded"


def test_requests_spread_over_the_replicas(scaled, nginx):
    replicas = scaled.containers("orchestrator-replica")
    route, count = "/v1/jobs", 30
    before = {replica: request_counts(replica, route) for replica in replicas}
    for _ in range(count):
        response = nginx.get(route)
        assert response.status_code == 200, response.text
    served = {replica: request_counts(replica, route) - before[replica] for replica in replicas}
    assert sum(served.values()) == count, served
    assert sum(1 for n in served.values() if n > 0) > 1, served  # spread over more than one replica


def test_a_live_session_through_nginx(scaled, nginx):
    """WebSocket /v1/live through nginx: the upgrade passes, and the page's own origin (nginx's
    address, port included) is accepted while another is refused, so the Host header kept its port."""
    url = scaled.url("NGINX_PORT")
    live = url.replace("http://", "ws://") + "/v1/live"
    frame = camera_frame()
    sent = decode(jpeg(frame))
    boxes = face_boxes(sent)
    assert len(boxes) == 2
    with connect(live, additional_headers={"Origin": url}, open_timeout=30) as connection:
        connection.send(json.dumps(opening()))
        assert json.loads(connection.recv(timeout=60))["type"] == "ready"
        for number in range(3):
            connection.send(jpeg(frame))
            header = json.loads(connection.recv(timeout=60))
            assert header["type"] == "frame" and header["frame"] == number, header
            assert header["faces"] == header["swapped"] == 2, header
            inside, outside = face_change(sent, decode(connection.recv(timeout=60)), boxes)
            assert inside > 8 and outside < 1.5, (inside, outside)
    foreign = "http://127.0.0.1:1"
    with connect(live, additional_headers={"Origin": foreign}, open_timeout=30) as connection:
        with contextlib.suppress(ConnectionClosed):  # the refusal may come before the opening is read
            connection.send(json.dumps(opening()))
        code, reason, _ = closing(connection)
    assert (code, reason) == (CLOSE_FORBIDDEN, f"the origin {foreign} is not allowed")


def test_nginx_keeps_answering_when_a_replica_is_killed(scaled, nginx):
    replicas = scaled.containers("orchestrator-replica")
    route, count = "/v1/jobs", 30
    killed = replicas[0]
    docker("kill", killed)
    assert docker("inspect", "-f", "{{.State.Running}}", killed).strip() == "false"
    alive = replicas[1:]
    before = {replica: request_counts(replica, route) for replica in alive}
    answered = [nginx.get(route).status_code for _ in range(count)]
    failed = count - answered.count(200)
    if failed:  # only nginx's own race, nginx/nginx#1656: a request meeting the DNS update finds no peer
        log = subprocess.run(["docker", "logs", scaled.container("nginx")], capture_output=True, text=True)
        assert failed == 1 and "no live upstreams" in log.stderr, (answered, log.stderr[-2000:])
    served = {replica: request_counts(replica, route) - before[replica] for replica in alive}
    assert sum(served.values()) == count - failed, served  # the survivors answered all the others


# --- the parts that cannot run here ---------------------------------------------------------------


def test_the_gpu_services_validate(installed, tmp_path):
    """The GPU services cannot run here (no GPU, no NGC image), but Compose accepts them as written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "SCALE_"))}
    for profiles in ([], ["--profile", "scale"]):
        result = subprocess.run(
            ["docker", "compose", "-f", str(ROOT / "compose.yaml"), *profiles, "config", "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        services = json.loads(result.stdout)["services"]
        triton = services["triton"]
        assert triton["build"]["dockerfile"] == "docker/triton.Dockerfile"
        devices = triton["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}]
        scale = {"orchestrator-replica", "nginx", "postgres"} if profiles else set()
        assert set(services) == {"triton", "orchestrator"} | scale
        if profiles:
            replica = services["orchestrator-replica"]
            assert replica["environment"]["FACESWAP_TRITON_URL"] == "triton:8001"
            assert replica["deploy"]["replicas"] == REPLICAS
    # The same check refuses a GPU reservation it does not understand.
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("capabilities: [gpu]", "capability: [gpu]"))
    result = subprocess.run(
        ["docker", "compose", "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0 and "capabilities is required" in result.stderr, result.stderr


# --- the script's failures: one line naming the cause, nothing left running -------------------------


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_fails_with_nothing_running(stack: Stack, result: subprocess.CompletedProcess) -> str:
    """The script failed with exactly one error line (returned), and no container of its stack runs."""
    assert result.returncode == 1, result.stderr
    (error,) = _errors(result.stderr)
    assert "Traceback" not in result.stderr
    label = f"label=com.docker.compose.project={stack.project}"
    assert not docker("ps", "-a", "-q", "--filter", label).split()
    assert not docker("network", "ls", "-q", "--filter", label).split()
    return error


def test_no_engine_ends_the_script_with_one_line(stacks, tmp_path):
    """A host with neither Docker nor apt-get to install it: this machine's commands, less those."""
    commands = tmp_path / "bin"
    commands.mkdir()
    for folder in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for command in Path(folder).iterdir():
            if not command.name.startswith(("docker", "apt-get")) and not (commands / command.name).exists():
                (commands / command.name).symlink_to(command)
    assert shutil.which("docker", path=str(commands)) is None
    engine = (STATE / "dockerd.pid").read_text() if (STATE / "dockerd.pid").exists() else None
    stack = Stack(stack_env(PATH=str(commands)))
    result = stack.script("up", timeout=120)
    stack.http.close()
    assert result.returncode == 1 and _errors(result.stderr) == [
        "error: no Docker engine: docker is not installed and this host has no apt-get for Debian's "
        "docker.io; install Docker Engine with Compose v2 and buildx"
    ], result.stderr
    assert not (STATE / stack.project).exists() or not any((STATE / stack.project).iterdir())
    shutil.rmtree(STATE / stack.project, ignore_errors=True)
    # The engine of the other stacks was neither started nor stopped.
    assert ((STATE / "dockerd.pid").read_text() if (STATE / "dockerd.pid").exists() else None) == engine


def test_a_port_in_use_ends_the_script_with_one_line(stack, stacks):
    other = other_stack(stacks)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(other.env["TRITON_GRPC_PORT"])))
        taken.listen()
        result = other.script("up", timeout=300)
    error = _assert_fails_with_nothing_running(other, result)
    assert error == (
        f"error: port {other.env['TRITON_GRPC_PORT']} on 127.0.0.1 is in use: stop what listens there "
        "or set TRITON_GRPC_PORT to another port"
    )


def test_an_image_that_fails_to_build_ends_the_script_with_one_line(stack, stacks, tmp_path):
    """A checkout whose orchestrator pins a version that does not exist: pip's own error is the line."""
    checkout = tmp_path / "checkout"
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    pyproject = checkout / "pyproject.toml"
    pin = re.search(r'"fastapi==([^"]+)"', pyproject.read_text())
    assert pin, "pyproject.toml pins no fastapi"
    pyproject.write_text(pyproject.read_text().replace(pin[0], '"fastapi==0.0.1"'))
    broken = Stack(stack_env(SHARED_DIR=str(SHARED)), root=checkout)  # images of its own tag
    stacks.append(broken)
    result = broken.script("up", timeout=600)
    error = _assert_fails_with_nothing_running(broken, result)
    log = checkout / ".run" / "containers" / broken.project / "build-orchestrator.log"
    assert error == (
        f"error: the orchestrator image failed to build: ERROR: No matching distribution found for "
        f"fastapi==0.0.1 (log: {log})"
    )
    broken.down("--images")


def test_a_stack_that_never_turns_healthy_ends_the_script_with_one_line(stack, stacks, tmp_path):
    """A detector that is no ONNX model: Triton refuses to start; the script says so and cleans up."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "scrfd_2.5g_kps.onnx").write_bytes(b"not an ONNX model")
    broken = other_stack(stacks, SHARED_DIR=str(tmp_path), UP_TIMEOUT="60")
    result = broken.script("up", timeout=600)
    error = _assert_fails_with_nothing_running(broken, result)
    gave_up = r"error: the stack did not turn healthy \(gave up after \d+ s of at most 60\): "
    failing = r"triton-cpu (keeps failing \(restarted \d+ times\)|exited with code 1): "
    refusal = r"error: detector: cannot read /models/files/detector\.onnx as an ONNX model \("
    assert re.match(gave_up + failing + refusal, error), error
