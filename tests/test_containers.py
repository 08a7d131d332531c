"""The containers for real: both images built, the CPU stack up with docker compose, swaps through it.

`scripts/containers.sh up` installs Docker where it is missing, builds the images (on stand-in
bases where the public ones cannot be pulled) and brings up compose.yaml's `cpu` profile, with the
real SCRFD detector and contract twins in the models volume. The tests then use the stack as a
user would: HTTP on the published loopback port, `docker compose` for restarts, logs and the
`scale` profile, `docker` for what is inside the images. The stack has a project name, ports and
image tags of its own, and goes down with its volumes and images however the tests end.
Marked `containers`: `-m "not containers"` runs the rest of the suite without them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from modelplane.local_server import free_port
from tests.helpers.clips import frame_count, moving_photo, video_size
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.service import PHOTO, create_job, upload, wait_job

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]  # the first test builds the images

SCRIPT = ROOT / "scripts" / "containers.sh"
SERVICES = ("triton-cpu", "orchestrator-cpu")
UID = "10001"
FAST = {"preset": "ultrafast"}
# Files the build context holds that .dockerignore must keep out of every image.
SENTINELS = ("modelplane/dockerignore-sentinel.onnx", "modelplane/dockerignore-sentinel.pem")


@dataclass
class Stack:
    """The stack of one test module: scripts/containers.sh and docker compose with its settings."""

    env: dict[str, str]
    up_log: str = ""  # what `scripts/containers.sh up` said
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url("ORCHESTRATOR_PORT"), timeout=120)

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.env[port]}"

    def script(self, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), *args],
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

    def container(self, service: str) -> str:
        (container,) = self.compose("ps", "-q", service).split()
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

    def image(self, service: str) -> str:
        return json.loads(self.compose("config", "--format", "json"))["services"][service]["image"]

    def model_files(self) -> dict[str, str]:
        """path -> size and modification time of everything in /models/files and /models/repository."""
        listing = self.exec(
            "triton-cpu", "find", "/models/files", "/models/repository", "-printf", "%p %s %T@\\n"
        )
        return dict(line.split(" ", 1) for line in listing.splitlines())


def docker(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout


def stack_env(**overrides: str) -> dict[str, str]:
    """This process's environment for the script: a project, image tag and free ports of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESWAP_", "TRITON_", "COMPOSE_"))}
    name = f"faceswap-test-{uuid.uuid4().hex[:8]}"
    env.update(COMPOSE_PROJECT_NAME=name, IMAGE_TAG=name)
    for port in (
        "ORCHESTRATOR_PORT",
        "NGINX_PORT",
        "TRITON_HTTP_PORT",
        "TRITON_GRPC_PORT",
        "TRITON_METRICS_PORT",
    ):
        env[port] = str(free_port())
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def installed() -> None:
    """Docker, Compose and buildx, installed by the script where they are missing."""
    result = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stack(installed) -> Iterator[Stack]:
    stack = Stack(stack_env())
    sentinels = [ROOT / name for name in SENTINELS]
    try:
        for sentinel in sentinels:
            sentinel.write_text("kept out of every image by .dockerignore\n")
        result = stack.script("up", timeout=1500)
        for sentinel in sentinels:
            sentinel.unlink()
        assert result.returncode == 0, result.stderr
        stack.up_log = result.stderr
        yield stack
    finally:
        for sentinel in sentinels:
            sentinel.unlink(missing_ok=True)
        stack.http.close()
        result = stack.script("down", "--volumes", "--images")
        assert result.returncode == 0, result.stderr


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


def request_counts(stack: Stack, container: str, route: str) -> float:
    """faceswap_http_requests_total for GET `route` on one replica, read from its own /metrics."""
    text = docker(
        "exec",
        container,
        "python",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())",
    )
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "faceswap_http_requests_total"
        and sample.labels["route"] == route
        and sample.labels["method"] == "GET"
    )


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
    changed = difference(result, original) > 8
    # The two faces changed, the rest of the photo did not (PNG: no recompression).
    assert 0.005 < changed.mean() < 0.5, changed.mean()


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
    assert stack.http.get("/readyz").status_code == 200


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
    wait = time.monotonic() + 60
    while stack.http.get("/readyz").status_code != 200:
        assert time.monotonic() < wait, stack.http.get("/readyz").text
        time.sleep(1)


# --- the scale profile ----------------------------------------------------------------------------


def test_scale_profile_spreads_requests_and_survives_a_killed_replica(stack):
    result = stack.script("up", "--scale", timeout=900)
    assert result.returncode == 0, result.stderr
    replicas = stack.compose("ps", "-q", "orchestrator-replica").split()
    assert len(replicas) == 3
    nginx = httpx.Client(base_url=stack.url("NGINX_PORT"), timeout=60)
    route, count = "/v1/jobs", 30
    before = {replica: request_counts(stack, replica, route) for replica in replicas}
    for _ in range(count):
        response = nginx.get(route)
        assert response.status_code == 200, response.text
    served = {replica: request_counts(stack, replica, route) - before[replica] for replica in replicas}
    assert sum(served.values()) == count, served
    assert sum(1 for n in served.values() if n > 0) > 1, served  # spread over more than one replica

    swap = nginx.post(
        "/v1/swap", files=upload(("target.jpg", PHOTO))
    )  # through nginx to a replica and Triton
    assert swap.status_code == 200 and swap.headers["x-faces-swapped"] == "2", swap.text

    killed = max(served, key=served.get)
    docker("kill", killed)
    answered = [nginx.get(route).status_code for _ in range(count)]
    assert answered == [200] * count
    nginx.close()


# --- the parts that cannot run here ---------------------------------------------------------------


def test_the_gpu_services_validate(installed, tmp_path):
    """The GPU services cannot run here (no GPU, no NGC image), but Compose accepts them as written."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
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
        assert set(services) == (
            {"triton", "orchestrator"} | ({"orchestrator-replica", "nginx"} if profiles else set())
        )
        if profiles:
            replica = services["orchestrator-replica"]
            assert replica["environment"]["FACESWAP_TRITON_URL"] == "triton:8001"
            assert replica["deploy"]["replicas"] == 3
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


# --- the script's failures --------------------------------------------------------------------------


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_port_in_use_ends_the_script_with_one_line(stack):
    env = stack_env(IMAGE_TAG=stack.env["IMAGE_TAG"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["TRITON_GRPC_PORT"])))
        taken.listen()
        result = Stack(env).script("up", timeout=300)
    assert result.returncode == 1
    assert _errors(result.stderr) == [
        f"error: port {env['TRITON_GRPC_PORT']} on 127.0.0.1 is in use: stop what listens there "
        "or set TRITON_GRPC_PORT to another port"
    ], result.stderr
    assert not docker(
        "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"
    ).split()


def test_a_stack_that_never_turns_healthy_ends_the_script_with_one_line(stack, tmp_path):
    """A detector that is no ONNX model: Triton refuses to start; the script says so and cleans up."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "scrfd_2.5g_kps.onnx").write_bytes(b"not an ONNX model")
    env = stack_env(IMAGE_TAG=stack.env["IMAGE_TAG"], SHARED_DIR=str(tmp_path), UP_TIMEOUT="60")
    broken = Stack(env)
    try:
        result = broken.script("up", timeout=600)
        assert result.returncode == 1
        (error,) = _errors(result.stderr)
        gave_up = r"error: the stack did not turn healthy \(gave up after \d+ s of at most 60\): triton-cpu "
        assert re.match(gave_up, error), error
        assert re.search(r": error: detector: cannot read \S+/detector\.onnx as an ONNX model \(", error), (
            error
        )
        label = f"label=com.docker.compose.project={env['COMPOSE_PROJECT_NAME']}"
        assert not docker("ps", "-a", "-q", "--filter", label).split()  # nothing left running
    finally:
        broken.script("down", "--volumes")
        broken.http.close()
