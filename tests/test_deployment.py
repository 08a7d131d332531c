"""Deployment files, checked without a Docker engine.

The Dockerfiles are linted by hadolint and the entrypoint by shellcheck; compose.yaml is validated
against the Compose Specification's JSON schema (vendored by check-jsonschema) and read for the
facts the deployment relies on; pip resolves each image's pinned dependencies for the image's
Python; and docker/triton-entrypoint.sh runs directly, with a stub that records its arguments in
place of tritonserver.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from modelplane.configs import CPU_BACKEND
from modelplane.fetch import LOCK_FILE
from modelplane.prepare import STAMP, code_digest, read_stamp
from modelplane.roles import REQUIRED_ROLES
from tests.helpers import deployment
from tests.helpers.deployment import STUB, tool
from tests.helpers.paths import ROOT

DOCKERFILES = (
    "docker/orchestrator.Dockerfile",
    "docker/triton.Dockerfile",
    "docker/triton-cpu.Dockerfile",
    "docker/nginx.Dockerfile",
    "scripts/standins/python.Dockerfile",
    "scripts/standins/nginx.Dockerfile",
    "scripts/standins/postgres.Dockerfile",
)
ENTRYPOINT = ROOT / "docker" / "triton-entrypoint.sh"
SCRIPTS = (
    ENTRYPOINT,
    ROOT / "scripts" / "containers.sh",
    ROOT / "scripts" / "standins" / "postgres-entrypoint.sh",
)
PORT_ARGS = ["--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]
READY = "http://127.0.0.1:8000/v2/health/ready"
PYTHON_BASE = "PYTHON_IMAGE=python:3.11.13-slim-bookworm"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


# --- Linters and schema ----------------------------------------------------------------------


def test_dockerfiles_pass_hadolint():
    result = subprocess.run(
        [tool("hadolint"), "--config", ".hadolint.yaml", "--no-color", *DOCKERFILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    config = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for index, line in enumerate(config):
        if re.fullmatch(r"\s*- DL\d+", line):
            assert config[index - 1].lstrip().startswith("#"), f"ignored without a reason: {line.strip()}"


def test_entrypoint_and_container_script_pass_shellcheck():
    result = subprocess.run([tool("shellcheck"), *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
    )


def test_compose_file_follows_the_compose_specification(tmp_path):
    result = _check_compose_schema(ROOT / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The same check refuses a service key the specification does not know.
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("shm_size:", "shm_sise:", 1))
    result = _check_compose_schema(broken)
    assert result.returncode != 0 and "shm_sise" in result.stdout + result.stderr


# --- What compose.yaml and the Dockerfiles promise ---------------------------------------------


def test_compose_services(compose):
    services = compose["services"]
    assert "version" not in compose
    assert {name for name, service in services.items() if "profiles" not in service} == {
        "triton",
        "orchestrator",
    }
    assert {profile for service in services.values() for profile in service.get("profiles", [])} == {
        "cpu",
        "scale",
    }
    assert all(service["restart"] == "unless-stopped" for service in services.values())

    devices = services["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in services["triton-cpu"]
    assert services["triton-cpu"]["environment"] == {"TRITON_RENDERING": "cpu"}
    for name, dockerfile in (("triton", "triton"), ("triton-cpu", "triton-cpu")):
        triton = services[name]
        assert triton["build"]["dockerfile"] == f"docker/{dockerfile}.Dockerfile"
        assert triton["image"] == f"triton-faceswap-{dockerfile}:0.1.0"
        (test,) = [part for part in triton["healthcheck"]["test"] if "urlopen" in part]
        assert READY in test and triton["healthcheck"]["test"][:2] == ["CMD", "python3"]
        assert triton["volumes"] == ["models:/models"]
        assert triton["shm_size"] == "1gb"
        assert triton["ports"] == [
            f"127.0.0.1:${{TRITON_{kind}_PORT:-{port}}}:{port}"
            for kind, port in (("HTTP", 8000), ("GRPC", 8001), ("METRICS", 8002))
        ]

    for name, triton, profiles in (
        ("orchestrator", "triton", []),
        ("orchestrator-cpu", "triton-cpu", ["cpu"]),
        ("orchestrator-replica", "${SCALE_TRITON:-triton}", ["scale"]),
    ):
        orchestrator = services[name]
        assert orchestrator["build"]["dockerfile"] == "docker/orchestrator.Dockerfile"
        assert orchestrator["image"] == "triton-faceswap-orchestrator:0.1.0"
        assert orchestrator["environment"]["FACESWAP_TRITON_URL"] == f"{triton}:8001"
        assert orchestrator["volumes"] == ["data:/data"]
        assert orchestrator.get("profiles", []) == profiles
        # Longer than the service's own shutdown grace (30 s), so running jobs are not killed.
        assert int(orchestrator["stop_grace_period"].removesuffix("s")) > 30
    for name, triton in (("orchestrator", "triton"), ("orchestrator-cpu", "triton-cpu")):
        assert services[name]["depends_on"] == {triton: {"condition": "service_healthy"}}
        assert services[name]["ports"] == ["${PUBLISH_ADDRESS:-127.0.0.1}:${ORCHESTRATOR_PORT:-8080}:8080"]
    # It serves whichever Triton SCALE_TRITON names, so it waits for the job store only.
    assert services["orchestrator-replica"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["orchestrator-replica"]["deploy"]["replicas"] == 3
    assert "ports" not in services["orchestrator-replica"]

    nginx = services["nginx"]
    assert nginx["build"]["dockerfile"] == "docker/nginx.Dockerfile"
    assert nginx["depends_on"] == {"orchestrator-replica": {"condition": "service_healthy"}}
    assert "volumes" not in nginx  # the configuration is in the image
    assert nginx["ports"] == ["${PUBLISH_ADDRESS:-127.0.0.1}:${NGINX_PORT:-8081}:8080"]
    instructions = deployment.instructions("docker/nginx.Dockerfile")
    assert deployment.arguments(instructions, "ARG") == ["NGINX_IMAGE=nginx:1.28.0-alpine"]
    assert deployment.arguments(instructions, "COPY") == ["docker/nginx.conf /etc/nginx/conf.d/default.conf"]
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    assert re.search(r"^\s*server orchestrator-replica:8080 resolve;", conf, re.M)
    assert re.search(r"^\s*proxy_pass http://orchestrator;", conf, re.M)
    # WebSocket upgrades pass (/v1/live), with the client's Host and port for its same-origin check.
    assert re.search(r"^map \$http_upgrade \$connection_upgrade \{", conf, re.M)
    for header in ("Upgrade $http_upgrade", "Connection $connection_upgrade", "Host $http_host"):
        assert re.search(rf"^\s*proxy_set_header {re.escape(header)};", conf, re.M), header
    assert re.search(r"^\s*listen 8080;", conf, re.M)
    assert re.search(r"^\s*client_max_body_size 200m;", conf, re.M)
    assert set(compose["volumes"]) == {"models", "data", "postgres"}


def test_compose_scale_profile_keeps_jobs_in_postgres(compose):
    """The replicas share one PostgreSQL job store; its password comes from .env, never the file."""
    services = compose["services"]
    url = services["orchestrator-replica"]["environment"]["FACESWAP_DATABASE_URL"]
    assert url == "postgresql://faceswap@postgres:5432/faceswap"  # user and database, no password
    postgres = services["postgres"]
    assert postgres["profiles"] == ["scale"]
    assert re.fullmatch(r"postgres:\d+\.\d+-bookworm", postgres["image"])
    assert postgres["env_file"] == [{"path": ".env", "required": False}]  # POSTGRES_PASSWORD
    assert postgres["environment"] == {"POSTGRES_USER": "faceswap", "POSTGRES_DB": "faceswap"}
    assert postgres["volumes"] == ["postgres:/var/lib/postgresql/data"]
    assert "ports" not in postgres  # reached over the compose network only
    assert postgres["healthcheck"]["test"] == ["CMD", "pg_isready", "-U", "faceswap", "-d", "faceswap"]
    documented = (ROOT / ".env.example").read_text()
    for variable in ("POSTGRES_PASSWORD", "PGPASSWORD"):
        assert f"\n#{variable}=\n" in documented


def test_compose_holds_no_secrets(compose):
    """Settings come from the optional .env file; nothing secret is written into compose.yaml."""
    for name, service in compose["services"].items():
        if name != "nginx":  # nginx needs none of the settings
            assert service["env_file"] == [{"path": ".env", "required": False}], name
        else:
            assert "env_file" not in service
        for variable in service.get("environment", {}):
            assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", variable), f"{name}: {variable} inline"
    text = (ROOT / "compose.yaml").read_text()
    assert not re.search(r"(?i)(api_key|token|secret|password)\w*\s*[:=]\s*\S", text)


def test_orchestrator_image():
    instructions = deployment.instructions("docker/orchestrator.Dockerfile")
    assert deployment.arguments(instructions, "ARG") == [PYTHON_BASE]
    stages = deployment.arguments(instructions, "FROM")
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    final = instructions[[i for i, (name, _) in enumerate(instructions) if name == "FROM"][-1] :]
    runs = " ".join(deployment.arguments(instructions, "RUN"))
    assert "/opt/venv/bin/pip install --no-cache-dir ." in runs
    assert "--mount=type=secret,id=pip_ca" in runs and "PIP_CERT=/run/secrets/pip_ca" in runs
    assert not re.search(r"pip install[^&]*\[", runs), (
        "the image installs the base dependencies only, no extras"
    )
    final_runs = " ".join(deployment.arguments(final, "RUN"))
    assert "apt-get install -y --no-install-recommends ffmpeg" in final_runs
    assert "rm -rf /var/lib/apt/lists/*" in final_runs
    assert not re.search(r"gcc|build-essential|python3?-dev", final_runs)
    assert "--uid 10001" in final_runs
    assert deployment.arguments(final, "COPY") == ["--from=build /opt/venv /opt/venv"]
    assert deployment.arguments(final, "USER") == ["10001:10001"]
    assert deployment.arguments(final, "EXPOSE") == ["8080"]
    assert deployment.arguments(final, "VOLUME") == ['["/data"]']
    environment = " ".join(deployment.arguments(final, "ENV"))
    for setting in ("FACESWAP_HOST=0.0.0.0", "FACESWAP_PORT=8080", "FACESWAP_DATA_DIR=/data"):
        assert setting in environment
    (healthcheck,) = deployment.arguments(final, "HEALTHCHECK")
    assert "urllib.request" in healthcheck and "/healthz" in healthcheck and "curl" not in healthcheck
    assert deployment.arguments(final, "ENTRYPOINT") == ['["python", "-m", "orchestrator", "serve"]']


def test_triton_image():
    instructions = deployment.instructions("docker/triton.Dockerfile")
    assert deployment.arguments(instructions, "ARG") == ["TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.12-py3"]
    assert deployment.arguments(instructions, "FROM") == ["${TRITON_IMAGE}"]
    copies = deployment.arguments(instructions, "COPY")
    assert f"modelplane/backend/model.py /opt/tritonserver/backends/{CPU_BACKEND}/model.py" in copies
    for copy in copies:
        source = copy.split()[-2]
        assert (ROOT / source).exists(), f"COPY of a missing path: {copy}"
    assert deployment.arguments(instructions, "USER") == ["10001:10001"]
    (entrypoint,) = deployment.arguments(instructions, "ENTRYPOINT")
    assert json.loads(entrypoint)[-1] == "/opt/faceswap/docker/triton-entrypoint.sh"
    assert os.access(ENTRYPOINT, os.X_OK)
    assert "--mount=type=secret,id=pip_ca" in " ".join(deployment.arguments(instructions, "RUN"))
    pins = _requirements(ROOT / "requirements" / "triton-image.txt")
    assert pins["numpy"] == "1.26.4", "the python backend needs numpy<2"
    assert set(pins) == {"numpy", "onnx", "onnxruntime", "tritonclient"}


def test_cpu_triton_image():
    """The CPU image: the GPU image's entrypoint, backend and model plane, on a Python base of choice."""
    instructions = deployment.instructions("docker/triton-cpu.Dockerfile")
    gpu = deployment.instructions("docker/triton.Dockerfile")
    assert deployment.arguments(instructions, "ARG") == [PYTHON_BASE]
    assert deployment.arguments(instructions, "FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    copies = deployment.arguments(instructions, "COPY")
    context_copies = [copy for copy in copies if not copy.startswith("--from=") and "/tmp/" not in copy]
    assert set(deployment.arguments(gpu, "COPY")) - {
        "requirements/triton-image.txt /tmp/triton-image.txt"
    } == set(context_copies)
    runs = " ".join(deployment.arguments(instructions, "RUN"))
    assert "--mount=type=secret,id=pip_ca" in runs
    assert "-r /tmp/triton-image.txt" in runs and "--no-deps -r /tmp/triton-cpu-image.txt" in runs
    assert _requirements(ROOT / "requirements" / "triton-cpu-image.txt") == {"nvidia-pytriton": "0.7.0"}
    for setting in ("TRITON_RENDERING=cpu", "MODEL_DIR=/models", "PATH=/opt/venv/bin:$PATH"):
        assert setting in " ".join(deployment.arguments(instructions, "ENV"))
    assert deployment.arguments(instructions, "USER") == ["10001:10001"]
    assert deployment.arguments(instructions, "VOLUME") == ['["/models"]']
    (healthcheck,) = deployment.arguments(instructions, "HEALTHCHECK")
    assert READY in healthcheck
    assert deployment.arguments(instructions, "ENTRYPOINT") == [
        '["/opt/faceswap/docker/triton-entrypoint.sh"]'
    ]


def _requirements(path: Path) -> dict[str, str]:
    """name -> pinned version of a requirements file; every line must pin with ==."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"not pinned: {line}"
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_dockerignore_keeps_secrets_weights_and_state_out():
    patterns = set((ROOT / ".dockerignore").read_text().splitlines())
    for pattern in (
        ".env",
        "!.env.example",
        "**/*.key",
        "**/*.pem",
        "**/*.onnx",
        "models/",
        "model_repository/*",
        "!model_repository/README.md",
        "data/",
        "outputs/",
        ".venv/",
        ".triton-env/",
        ".run/",
        ".git/",
    ):
        assert pattern in patterns


def test_env_example_documents_every_setting_and_holds_no_secret(compose):
    documented = dict(
        re.fullmatch(r"#?(\w+)=(.*)", line).groups()
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.fullmatch(r"#?[A-Z_]+=.*", line)
    )
    script = ENTRYPOINT.read_text()
    read = set(re.findall(r"\$\{(TRITON_\w+|FACESWAP_\w+)", script))
    read |= {f"FACESWAP_{role.upper()}" for role in REQUIRED_ROLES}  # read by modelplane --from-environment
    read |= {name for service in compose["services"].values() for name in service.get("environment", {})}
    read |= set(re.findall(r"\$\{(\w+):-", (ROOT / "compose.yaml").read_text()))  # compose.yaml's own
    assert read <= set(documented), f"undocumented: {sorted(read - set(documented))}"
    assert documented["FACESWAP_API_KEY"] == ""


# --- The images' dependencies resolve on the package index ----------------------------------


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path, Path, dict[str, str]]]:
    """Both images' pip resolutions, started at once: each takes tens of seconds of index reads."""
    directory = tmp_path_factory.mktemp("resolve")
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    triton_file = ROOT / "requirements" / "triton-image.txt"
    jobs = {
        "orchestrator": ("3.11", base, {canonicalize_name(Requirement(r).name): r for r in base}),
        "triton": ("3.12", ["-r", str(triton_file)], _requirements(triton_file)),
    }
    started = {}
    for name, (python, requirements, pins) in jobs.items():
        report, log = directory / f"{name}.json", directory / f"{name}.log"
        with log.open("w") as stream:
            # --target makes pip resolve for another Python (and ignore what is installed here).
            process = subprocess.Popen(
                [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:"]
                + ["--python-version", python, "--target", str(directory / name), "--report", str(report)]
                + requirements,
                stdout=stream,
                stderr=subprocess.STDOUT,
            )
        started[name] = (process, report, log, pins)
    yield started
    for process, *_ in started.values():
        process.kill()
        process.wait()


def _resolved(resolutions, name: str) -> dict[str, str]:
    process, report, log, _ = resolutions[name]
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    install = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in install}


@pytest.mark.package_index
def test_orchestrator_image_dependencies_resolve_for_python_3_11(resolutions):
    resolved = _resolved(resolutions, "orchestrator")
    for name, requirement in resolutions["orchestrator"][3].items():
        (specifier,) = Requirement(requirement).specifier
        assert resolved.get(name) == specifier.version, requirement
    assert not {"onnx", "onnxruntime", "insightface", "pytest"} & set(resolved)


@pytest.mark.package_index
def test_triton_image_dependencies_resolve_for_python_3_12(resolutions):
    resolved = _resolved(resolutions, "triton")
    for name, version in resolutions["triton"][3].items():
        assert resolved.get(name) == version, name
    assert resolved["numpy"].startswith("1.")


# --- docker/triton-entrypoint.sh, run directly --------------------------------------------------


def _run_entrypoint(model_dir: Path, scratch: Path, **environment: str) -> tuple[int, str, str, list | None]:
    """Run the entrypoint with a stub tritonserver: (status, stdout, stderr, the stub's arguments)."""
    stub, recorded = scratch / "tritonserver", scratch / "tritonserver.args"
    stub.write_text(STUB)
    stub.chmod(0o755)
    recorded.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESWAP_", "TRITON_"))}
    env.update(
        MODEL_DIR=str(model_dir),
        TRITONSERVER=str(stub),
        STUB_ARGS=str(recorded),
        PYTHON=sys.executable,
        **environment,
    )
    result = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=120)
    arguments = recorded.read_text().splitlines() if recorded.exists() else None
    return result.returncode, result.stdout, result.stderr, arguments


def _choices(twin_files: dict[str, Path]) -> dict[str, str]:
    return {f"FACESWAP_{role.upper()}": str(path) for role, path in twin_files.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mtimes(directory: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*")}


@pytest.fixture(scope="module")
def first_start(tmp_path_factory, twin_files):
    """One start of the entrypoint on an empty model directory, CPU rendering."""
    scratch = tmp_path_factory.mktemp("first_start")
    model_dir = scratch / "models"
    outcome = _run_entrypoint(model_dir, scratch, TRITON_RENDERING="cpu", **_choices(twin_files))
    return model_dir, outcome


def test_first_start_copies_models_prepares_the_repository_and_execs_triton(first_start, twin_files):
    model_dir, (status, _, stderr, arguments) = first_start
    assert status == 0, stderr
    lock = json.loads((model_dir / "files" / LOCK_FILE).read_text())
    for role, source in twin_files.items():
        copy = model_dir / "files" / lock[role]["file"]
        assert copy.read_bytes() == source.read_bytes()
        assert lock[role]["sha256"] == _sha256(source)
    repository = model_dir / "repository"
    stamp = read_stamp(repository)
    assert stamp["sources"] == {role: _sha256(path) for role, path in twin_files.items()}
    assert (repository / "face_swap" / "config.pbtxt").is_file()
    assert (repository / "swapper" / "configs" / "cpu.pbtxt").is_file()
    assert (repository / "swapper" / "1" / "model.onnx").is_file()
    assert arguments == [f"--model-repository={repository}", "--model-config-name=cpu", *PORT_ARGS]


def test_restart_with_a_current_repository_does_not_prepare_again(first_start, twin_files, tmp_path):
    model_dir = tmp_path / "models"
    shutil.copytree(first_start[0], model_dir)
    before = _mtimes(model_dir)
    status, stdout, stderr, arguments = _run_entrypoint(
        model_dir,
        tmp_path,
        TRITON_RENDERING="gpu",
        TRITON_EXTRA_ARGS="--log-verbose=1 --exit-on-error=true",
        **_choices(twin_files),
    )
    assert status == 0, stderr
    assert f"{model_dir / 'repository'} is up to date" in stdout
    assert _mtimes(model_dir) == before
    assert arguments == [
        f"--model-repository={model_dir / 'repository'}",
        *PORT_ARGS,
        "--log-verbose=1",
        "--exit-on-error=true",
    ]


def test_a_repository_prepared_by_another_release_is_prepared_again(first_start, twin_files, tmp_path):
    """An upgrade changes the model plane's graphs: its stamp records the code that prepared it."""
    model_dir = tmp_path / "models"
    shutil.copytree(first_start[0], model_dir)
    stamp_file = model_dir / "repository" / STAMP
    stamp = json.loads(stamp_file.read_text())
    assert stamp["code"] == code_digest()
    stamp_file.write_text(json.dumps(stamp | {"code": "an older release"}))
    status, stdout, stderr, _ = _run_entrypoint(model_dir, tmp_path, **_choices(twin_files))
    assert status == 0, stderr
    assert "is up to date" not in stdout and "wrote" in stdout
    assert read_stamp(model_dir / "repository")["code"] == code_digest()


def test_a_corrupt_model_file_is_detected_and_copied_again(first_start, twin_files, tmp_path):
    model_dir = tmp_path / "models"
    shutil.copytree(first_start[0], model_dir)
    copy = model_dir / "files" / twin_files["swapper"].name
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(data)
    status, stdout, stderr, arguments = _run_entrypoint(model_dir, tmp_path, **_choices(twin_files))
    assert status == 0, stderr
    assert copy.read_bytes() == twin_files["swapper"].read_bytes()
    assert f"{model_dir / 'repository'} is up to date" in stdout  # prepared from the good file
    assert arguments == [f"--model-repository={model_dir / 'repository'}", *PORT_ARGS]


def test_offline_without_models_fails_with_one_error_line(tmp_path):
    with socket.socket() as probe:  # a loopback port with nothing listening: no network at all
        probe.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{probe.getsockname()[1]}"
    model_dir = tmp_path / "models"
    status, _, stderr, arguments = _run_entrypoint(
        model_dir, tmp_path, https_proxy=proxy, HTTPS_PROXY=proxy, no_proxy="", NO_PROXY=""
    )
    assert status != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach github.com" in errors[0], stderr
    assert "Traceback" not in stderr
    assert arguments is None, "tritonserver must not start"
    assert not (model_dir / "repository" / STAMP).exists()


def test_an_unknown_rendering_is_refused(tmp_path):
    status, _, stderr, arguments = _run_entrypoint(tmp_path / "models", tmp_path, TRITON_RENDERING="tpu")
    assert status == 2
    assert stderr.strip() == "error: TRITON_RENDERING must be gpu or cpu, not 'tpu'"
    assert arguments is None


# --- the README's container sections say what the files do --------------------------------------


def test_deployment_doc_commands_match_the_files(compose, first_start):
    text = (ROOT / "README.md").read_text().split("## Containers", 1)[1].split("\n## ", 1)[0]
    services = compose["services"]
    commands = re.findall(r"docker compose ((?:--profile \S+ )*)up -d((?: [a-z][\w-]*)*)", text)
    assert {"", "--profile cpu", "--profile scale"} <= {profiles.strip() for profiles, _ in commands}
    for profiles, named in commands:
        enabled = set(re.findall(r"--profile (\S+)", profiles))
        for name in named.split():
            assert name in services, name
            assert set(services[name].get("profiles", [])) <= enabled, name
    published = {
        int(re.fullmatch(r".*:(?:\$\{\w+:-)?(\d+)\}?:\d+", port)[1])  # the default of ${NAME:-PORT}
        for s in services.values()
        for port in s.get("ports", [])
    }
    assert {int(port) for port in re.findall(r"localhost:(\d+)", text)} <= published
    (image,) = deployment.arguments(deployment.instructions("docker/triton.Dockerfile"), "ARG")
    sdk_runs = re.findall(r"docker run --rm --net=host (\S+) \\\n\s+perf_analyzer -m (\w+)", text)
    assert sdk_runs and {run[0] for run in sdk_runs} == {image.split("=", 1)[1] + "-sdk"}
    repository = first_start[0] / "repository"
    assert all((repository / model / "config.pbtxt").is_file() for _, model in sdk_runs)
