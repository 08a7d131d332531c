"""deploy/kubernetes/, checked without a cluster.

Each overlay is rendered by kustomize (Debian's, installed by scripts/install_trixie_tools.sh), every
rendered object is validated against the pinned Kubernetes version's schemas (kubernetes-validate,
strict: an unknown field fails), and the objects are read for what the deployment relies on. Then
what can run without a cluster runs: the model repository Job and a Triton pod in sequence with
docker/triton-entrypoint.sh (their environment and arguments taken from the rendered objects, the
pod on a read-only mount), the orchestrator with a read-only root filesystem, and the autoscaler's
PromQL in Prometheus' engine (promtool) on a real Triton's counters.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelplane.local_server import free_port
from modelplane.prepare import STAMP, read_stamp
from modelplane.roles import REQUIRED_ROLES as ROLES
from orchestrator.settings import Settings
from orchestrator.triton import TritonClient, grpc_target
from tests.helpers.clips import ffmpeg
from tests.helpers.deployment import STUB, arguments, instructions, tool
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.service import create_job, upload, wait_job

DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ("gpu", "cpu")
ENTRYPOINT = ROOT / "docker" / "triton-entrypoint.sh"


class Rendered(dict):
    """An overlay's objects by (kind, name); the ConfigMap by its name before kustomize's hash."""

    def __init__(self, overlay: str, documents: list[dict]):
        super().__init__(((d["kind"], d["metadata"]["name"]), d) for d in documents)
        self.overlay = overlay
        self.documents = documents

    def pod(self, kind: str, name: str) -> dict:
        return self[kind, name]["spec"]["template"]["spec"]

    def container(self, kind: str, name: str, container: str) -> dict:
        (found,) = [c for c in self.pod(kind, name)["containers"] if c["name"] == container]
        return found

    def config_map(self, prefix: str) -> dict:
        (found,) = [d for (kind, name), d in self.items() if kind == "ConfigMap" and name.startswith(prefix)]
        return found


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> Rendered:
    kustomize = shutil.which("kustomize")
    assert kustomize, "kustomize is missing: run scripts/setup_env.sh (scripts/install_trixie_tools.sh)"
    result = subprocess.run(
        [kustomize, "build", str(DEPLOY / "overlays" / request.param)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return Rendered(request.param, list(yaml.safe_load_all(result.stdout)))


@pytest.fixture(scope="module")
def adapter_rule() -> dict:
    values = yaml.safe_load((DEPLOY / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["default"] is False
    (rule,) = values["rules"]["custom"]
    return rule


def _dockerfile(name: str, instruction: str) -> list[str]:
    """The arguments of every INSTRUCTION of docker/NAME."""
    return arguments(instructions(f"docker/{name}"), instruction)


def _environment(rendered: Rendered, container: dict) -> dict[str, str]:
    """A container's literal environment: its ConfigMaps, then its own values."""
    environment = {}
    for source in container.get("envFrom", []):
        environment.update(rendered["ConfigMap", source["configMapRef"]["name"]]["data"])
    environment.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return environment


def _mounts(rendered: Rendered, kind: str, name: str, container: dict) -> dict[str, tuple[dict, bool]]:
    """mountPath -> (the pod's volume, mounted read-only)."""
    volumes = {v["name"]: v for v in rendered.pod(kind, name)["volumes"]}
    return {m["mountPath"]: (volumes[m["name"]], m.get("readOnly", False)) for m in container["volumeMounts"]}


def _pod_labels(rendered: Rendered, deployment: str) -> dict:
    return rendered["Deployment", deployment]["spec"]["template"]["metadata"]["labels"]


def _containers(rendered: Rendered) -> list[tuple[str, dict, dict]]:
    """(pod owner, pod spec, container) for every container and init container; every pod owner
    the deployment has holds at least one, so a loop over them never passes on nothing."""
    found = [
        (name, document["spec"]["template"]["spec"], container)
        for (kind, name), document in rendered.items()
        if kind in ("Deployment", "Job")
        for container in (
            *document["spec"]["template"]["spec"].get("initContainers", []),
            *document["spec"]["template"]["spec"]["containers"],
        )
    ]
    assert {owner for owner, _, _ in found} == {"model-repository", "triton", "orchestrator"}
    return found


# --- The schemas ---------------------------------------------------------------------------------


def test_every_object_validates_against_the_pinned_kubernetes_schemas(rendered):
    for document in rendered.documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    # The same check refuses a field the schema does not know.
    deployment = yaml.safe_load(yaml.safe_dump(rendered["Deployment", "triton"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessProbes"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_overlays_render_the_same_objects(rendered):
    assert {key for key in rendered if key[0] != "ConfigMap"} == {
        ("Namespace", "faceswap"),
        ("PersistentVolumeClaim", "models"),
        ("PersistentVolumeClaim", "media"),
        ("Job", "model-repository"),
        ("Deployment", "triton"),
        ("Service", "triton-headless"),
        ("Deployment", "orchestrator"),
        ("Service", "orchestrator"),
        ("Ingress", "orchestrator"),
        ("HorizontalPodAutoscaler", "triton"),
        ("HorizontalPodAutoscaler", "orchestrator"),
    }
    for (kind, _), document in rendered.items():
        if kind != "Namespace":
            assert document["metadata"]["namespace"] == "faceswap"
    rendering = rendered.config_map("model-plane-")["data"]["TRITON_RENDERING"]
    assert rendering == rendered.overlay


def test_the_kustomize_installer_passes_shellcheck():
    script = ROOT / "scripts" / "install_trixie_tools.sh"
    result = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scripts/install_trixie_tools.sh" in (ROOT / "scripts" / "setup_env.sh").read_text()


# --- Images, security, resources -----------------------------------------------------------------


def test_images_are_the_compose_images(rendered):
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    images = {name: service["image"] for name, service in compose["services"].items() if "build" in service}
    for owner, _, container in _containers(rendered):
        expected = images["orchestrator"] if owner == "orchestrator" else images["triton"]
        assert container["image"] == expected, (owner, container["name"])


def test_every_pod_runs_as_the_images_user_without_privileges(rendered):
    users = {
        dockerfile: _dockerfile(dockerfile, "USER")
        for dockerfile in ("orchestrator.Dockerfile", "triton.Dockerfile")
    }
    assert users["orchestrator.Dockerfile"] == users["triton.Dockerfile"] == ["10001:10001"]
    for owner, pod, container in _containers(rendered):
        assert pod["automountServiceAccountToken"] is False, owner
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and (context["runAsUser"], context["runAsGroup"]) == (
            10001,
            10001,
        )
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, (owner, container["name"])
        assert security["capabilities"] == {"drop": ["ALL"]}, (owner, container["name"])
        assert "privileged" not in security and "runAsUser" not in security


def test_every_container_has_resources(rendered):
    for owner, _, container in _containers(rendered):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), (owner, container["name"])
        assert "memory" in resources["limits"], (owner, container["name"])
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for _, _, c in _containers(rendered)]
    triton = rendered.container("Deployment", "triton", "triton")
    if rendered.overlay == "gpu":
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert gpus.count("1") == 1 and gpus.count(None) == len(gpus) - 1  # the Triton container only
        assert rendered.pod("Deployment", "triton")["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert gpus == [None] * len(gpus)
        assert "tolerations" not in rendered.pod("Deployment", "triton")


# --- The model repository, prepared once ---------------------------------------------------------


def test_the_job_prepares_the_models_volume_with_the_triton_entrypoint(rendered):
    job = rendered["Job", "model-repository"]
    pod = rendered.pod("Job", "model-repository")
    (container,) = pod["containers"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    assert "command" not in container and "args" not in container, "the image's own entrypoint"
    assert _environment(rendered, container)["TRITONSERVER"] == "true"  # prepares, starts no server
    assert pod["securityContext"]["fsGroup"] == 10001
    ((volume, read_only),) = _mounts(rendered, "Job", "model-repository", container).values()
    assert not read_only and volume["persistentVolumeClaim"] == {"claimName": "models"}
    assert _dockerfile("triton.Dockerfile", "ENV") == ["MODEL_DIR=/models PYTHONDONTWRITEBYTECODE=1"]
    assert container["volumeMounts"][0]["mountPath"] == "/models"


def test_triton_pods_mount_the_models_read_only_with_shared_memory(rendered):
    pod = rendered.pod("Deployment", "triton")
    triton = rendered.container("Deployment", "triton", "triton")
    mounts = _mounts(rendered, "Deployment", "triton", triton)
    models, read_only = mounts["/models"]
    assert read_only and models["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    shm, _ = mounts["/dev/shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    (wait,) = pod["initContainers"]
    assert f"/models/repository/{STAMP}" in wait["command"][-1]
    assert all(read_only for _, read_only in _mounts(rendered, "Deployment", "triton", wait).values())
    # The Job and the pods read the same model choices.
    job = rendered.pod("Job", "model-repository")["containers"][0]
    assert (
        triton["envFrom"]
        == job["envFrom"]
        == [{"configMapRef": {"name": rendered.config_map("model-plane-")["metadata"]["name"]}}]
    )
    assert "command" not in triton
    assert {"--grpc-max-connection-age=60000", "--grpc-max-connection-age-grace=130000"} <= set(
        triton["args"]
    )


def test_triton_probes_use_its_health_endpoints(rendered):
    triton = rendered.container("Deployment", "triton", "triton")
    ports = {port["name"]: port["containerPort"] for port in triton["ports"]}
    entrypoint = ENTRYPOINT.read_text()
    for name, number in ports.items():
        assert f"--{name}-port {number}" in entrypoint, name
    probes = {probe: triton[f"{probe}Probe"]["httpGet"] for probe in ("startup", "readiness", "liveness")}
    assert probes["startup"] == probes["readiness"] == {"path": "/v2/health/ready", "port": "http"}
    assert probes["liveness"] == {"path": "/v2/health/live", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60  # as compose's start_period


# --- Balancing: a headless Service, round robin from each orchestrator ------------------------------


def test_orchestrators_balance_over_the_headless_service(rendered):
    service = rendered["Service", "triton-headless"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= _pod_labels(rendered, "triton").items()
    (grpc,) = [port for port in service["spec"]["ports"] if port["name"] == "grpc"]
    triton = rendered.container("Deployment", "triton", "triton")
    assert {"name": "grpc", "containerPort": grpc["port"]} in triton["ports"] and grpc["targetPort"] == "grpc"
    orchestrator = rendered.container("Deployment", "orchestrator", "orchestrator")
    url = _environment(rendered, orchestrator)["FACESWAP_TRITON_URL"]
    namespace = service["metadata"]["namespace"]
    assert url == f"dns:///triton-headless.{namespace}.svc.cluster.local:{grpc['port']}"
    assert grpc_target(url) == url  # handed to gRPC as it is: its DNS resolver and round robin


# --- The orchestrator ------------------------------------------------------------------------------


def test_the_orchestrator_reads_its_secrets_from_secrets(rendered):
    orchestrator = rendered.container("Deployment", "orchestrator", "orchestrator")
    references = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in orchestrator["env"] if "valueFrom" in e}
    assert references["FACESWAP_DATABASE_URL"] == {"name": "faceswap-database", "key": "url"}  # required
    assert references["FACESWAP_API_KEY"] == {"name": "faceswap-api-key", "key": "api-key", "optional": True}
    assert not [d for d in rendered.documents if d["kind"] == "Secret"], "Secrets are created by the user"
    text = yaml.safe_dump_all(rendered.documents)
    assert not re.search(r"postgres(ql)?://", text)
    readme = (DEPLOY / "README.md").read_text()
    for reference in references.values():
        command = f"kubectl create secret generic -n faceswap {reference['name']}"
        assert f"{command} --from-literal={reference['key']}=" in readme


def test_the_orchestrator_writes_only_to_its_volumes(rendered):
    orchestrator = rendered.container("Deployment", "orchestrator", "orchestrator")
    assert orchestrator["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = _mounts(rendered, "Deployment", "orchestrator", orchestrator)
    assert set(mounts) == {"/data", "/tmp"}
    assert "FACESWAP_DATA_DIR=/data" in " ".join(_dockerfile("orchestrator.Dockerfile", "ENV"))
    media, read_only = mounts["/data"]
    assert not read_only and media["persistentVolumeClaim"] == {"claimName": "media"}
    assert "emptyDir" in mounts["/tmp"][0]
    for claim in ("media", "models"):
        assert rendered["PersistentVolumeClaim", claim]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_orchestrator_probes_and_shutdown(rendered):
    pod = rendered.pod("Deployment", "orchestrator")
    orchestrator = rendered.container("Deployment", "orchestrator", "orchestrator")
    assert orchestrator["ports"] == [{"name": "http", "containerPort": 8080}]
    assert _dockerfile("orchestrator.Dockerfile", "EXPOSE") == ["8080"]
    assert orchestrator["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert orchestrator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert orchestrator["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["terminationGracePeriodSeconds"] > Settings().shutdown_grace_seconds
    service = rendered["Service", "orchestrator"]
    assert service["spec"]["selector"].items() <= _pod_labels(rendered, "orchestrator").items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_the_orchestrator_runs_on_a_read_only_root_filesystem(triton, tmp_path):
    """As its pod spec has it: / read-only, /tmp and the data directory writable. Here the service
    runs in a mount namespace whose / is read-only except /tmp (where its data directory also is),
    and serves a synchronous swap, an image job and a video job. The image is over 1 MiB, so its
    upload is spooled to a file in /tmp (without a writable /tmp, such a request fails)."""
    image, clip = tmp_path / "large.png", tmp_path / "clip.mp4"
    ffmpeg("-i", TWO_FACES, "-vf", "scale=1600:-2", image)
    ffmpeg(
        "-loop",
        "1",
        "-i",
        TWO_FACES,
        "-t",
        "1",
        "-r",
        "5",
        "-vf",
        "scale=320:-2",
        "-pix_fmt",
        "yuv420p",
        clip,
    )
    assert image.stat().st_size > 2**20
    port, data, log = free_port(), tmp_path / "data", tmp_path / "service.log"
    read_only_root = 'mount --bind /tmp /tmp && mount -o remount,bind,ro / && exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", read_only_root, "sh"]
    command += [sys.executable, "-m", "orchestrator", "serve", "--port", str(port)]
    command += ["--triton-url", triton.grpc_url, "--data-dir", str(data)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESWAP_")} | {"HOME": "/nonexistent"}
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 60
            while not _answers(client, "/healthz"):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            mounts = Path(f"/proc/{process.pid}/mountinfo").read_text().splitlines()
            root = next(line.split() for line in mounts if line.split()[4] == "/")
            assert "ro" in root[5].split(","), root  # the service's / is read-only
            photo, large = TWO_FACES.read_bytes(), ("large.png", image.read_bytes())
            response = client.post("/v1/swap", files=upload(large, ("source.jpg", photo)))
            assert response.status_code == 200, response.text
            for target in (large, ("clip.mp4", clip.read_bytes())):
                job = wait_job(client, create_job(client, upload(target, ("source.jpg", photo)))["id"])
                assert client.get(job["result_url"]).status_code == 200
    finally:
        process.terminate()
        process.wait(60)
    assert "Read-only file system" not in log.read_text()


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_the_ingress_has_nginx_conf_limits(rendered):
    ingress = rendered["Ingress", "orchestrator"]
    conf = (ROOT / "docker" / "nginx.conf").read_text()

    def directive(name: str) -> str:
        (value,) = re.findall(rf"^\s*{name} (\S+);", conf, re.M)
        return value

    annotations = {
        key.removeprefix("nginx.ingress.kubernetes.io/"): value
        for key, value in ingress["metadata"]["annotations"].items()
    }
    assert annotations == {
        "proxy-body-size": directive("client_max_body_size"),
        "proxy-request-buffering": directive("proxy_request_buffering"),
        "proxy-connect-timeout": directive("proxy_connect_timeout").removesuffix("s"),
        "proxy-send-timeout": directive("proxy_send_timeout").removesuffix("s"),
        "proxy-read-timeout": directive("proxy_read_timeout").removesuffix("s"),
    }
    assert annotations["proxy-body-size"] == f"{Settings().max_upload_mb}m"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["backend"]["service"] == {
        "name": "orchestrator",
        "port": {"name": "http"},
    }


# --- Autoscaling -----------------------------------------------------------------------------------


def test_autoscalers(rendered, adapter_rule):
    for deployment in ("triton", "orchestrator"):
        assert "replicas" not in rendered["Deployment", deployment]["spec"], "the autoscaler sets them"
        spec = rendered["HorizontalPodAutoscaler", deployment]["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
        assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    (queue,) = rendered["HorizontalPodAutoscaler", "triton"]["spec"]["metrics"]
    assert queue["type"] == "Pods"
    assert queue["pods"]["metric"]["name"] == adapter_rule["name"]["as"]
    assert queue["pods"]["target"]["type"] == "AverageValue"
    (cpu,) = rendered["HorizontalPodAutoscaler", "orchestrator"]["spec"]["metrics"]
    assert cpu == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    assert "cpu" in rendered.container("Deployment", "orchestrator", "orchestrator")["resources"]["requests"]


def test_the_adapter_rule_averages_triton_queue_time_per_pod(rendered, adapter_rule, repository):
    triton = rendered["Deployment", "triton"]["spec"]["template"]
    metrics = [p["containerPort"] for p in triton["spec"]["containers"][0]["ports"] if p["name"] == "metrics"]
    assert triton["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics[0]),
        "prometheus.io/path": "/metrics",
    }
    assert adapter_rule["seriesQuery"].startswith("nv_inference_queue_duration_us{")
    assert adapter_rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = adapter_rule["metricsQuery"]
    counters = re.findall(r"rate\((\w+)\{<<\.LabelMatchers>>,model=~\"([\w|]+)\"\}\[2m\]\)", query)
    assert [name for name, _ in counters] == [
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    ]
    for _, models in counters:  # the role models, where requests queue for an instance
        assert set(models.split("|")) == set(ROLES)
        assert all((repository / model / "config.pbtxt").is_file() for model in ROLES)

    assert " ".join(query.split()) in " ".join((DEPLOY / "README.md").read_text().split())


QUEUE, SUCCESS = "nv_inference_queue_duration_us", "nv_inference_request_success"


def _triton_counters(server) -> dict[tuple[str, str], float]:
    """(counter, model) -> value, from the server's metrics endpoint."""
    with urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {  # the family's name: the parser adds _total to its counters' samples
        (family.name, sample.labels["model"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name in (QUEUE, SUCCESS)
        for sample in family.samples
    }


def test_the_adapter_query_is_the_average_queue_time_per_request(adapter_rule, ensemble_triton, tmp_path):
    """The rule's PromQL, evaluated by Prometheus' engine (promtool) on a real Triton's counters
    before and after a burst of swaps, as one busy pod and one idle pod, against the ratio of the
    counters' increases over the role models. The server runs the GPU rendering's ensembles, whose
    role models count their own queueing (the CPU rendering fuses them into the ensembles)."""
    triton = ensemble_triton
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/setup_env.sh (scripts/install_trixie_tools.sh)"
    client = TritonClient(triton.grpc_url)
    size = client.crop_size("face_swap")
    crops = np.random.default_rng(1).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    latent = client.latent(np.ones(client.model_info("swap_latent").inputs[0].shape, np.float32))
    before = _triton_counters(triton)
    with ThreadPoolExecutor(6) as pool:  # concurrent requests, so that some wait for an instance
        list(pool.map(lambda _: client.swap(crops, latent), range(30)))
    client.close()
    # A model's series appear once it has run.
    increase = {key: value - before.get(key, 0) for key, value in _triton_counters(triton).items()}
    waited = sum(increase.get((QUEUE, model), 0) for model in ROLES)
    requests = sum(increase.get((SUCCESS, model), 0) for model in ROLES)
    assert waited > 0 and requests > 0, increase

    # Counters as Prometheus would hold them for two pods scraped a minute apart, from 0 (so that
    # rate() does not extrapolate): one with the burst's increases, one idle.
    series = [
        {
            "series": f'{name}{{namespace="faceswap",pod="{pod}",model="{model}",version="1"}}',
            "values": f"0 {value if pod == 'triton-busy' else 0}",
        }
        for (name, model), value in increase.items()
        for pod in ("triton-busy", "triton-idle")
    ]
    query = adapter_rule["metricsQuery"].replace("<<.GroupBy>>", "pod")
    query = query.replace("<<.LabelMatchers>>", 'namespace="faceswap",pod=~"triton-busy|triton-idle"')
    tests = {
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": query,
                        "eval_time": "1m",
                        "exp_samples": [
                            {"labels": '{pod="triton-busy"}', "value": waited / requests / 1e6},
                            {"labels": '{pod="triton-idle"}', "value": 0},
                        ],
                    }
                ],
            }
        ]
    }
    (tmp_path / "query_test.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", "query_test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- The Job, then a Triton pod on the read-only volume ----------------------------------------


def _run(command: list[str], environment: dict[str, str], read_only: Path | None = None):
    """Run as a container of the manifests would: its environment only, and `read_only` bind-mounted
    read-only in a mount namespace of its own."""
    if read_only is not None:
        mount = f'mount --bind -o ro "{read_only}" "{read_only}" && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount, "sh", *command]
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **environment}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_the_job_then_triton_pods_on_the_read_only_volume(rendered, twin_files, tmp_path):
    models = tmp_path / "models"  # the volume, at /models in the pods
    models.mkdir()
    choices = {f"FACESWAP_{role.upper()}": str(path) for role, path in twin_files.items()}  # an overlay's
    stub, recorded = tmp_path / "tritonserver", tmp_path / "tritonserver.args"
    stub.write_text(STUB)
    stub.chmod(0o755)

    def environment(container: dict, **more: str) -> dict[str, str]:
        assert "MODEL_DIR" not in _environment(rendered, container)  # the image's /models
        return {**_environment(rendered, container), **choices, "MODEL_DIR": str(models), **more}

    pod = rendered.pod("Deployment", "triton")
    (wait,) = pod["initContainers"]
    waiting = [*wait["command"][:-1], wait["command"][-1].replace("/models", str(models))]
    assert _run(["timeout", "3", *waiting], {}, read_only=models).returncode == 124  # waits for the Job

    job = rendered.pod("Job", "model-repository")["containers"][0]
    result = _run([str(ENTRYPOINT)], environment(job))
    assert result.returncode == 0, result.stderr
    assert set(read_stamp(models / "repository")["sources"]) == set(ROLES)
    assert _run(waiting, {}, read_only=models).returncode == 0

    triton = rendered.container("Deployment", "triton", "triton")
    env = environment(triton, TRITONSERVER=str(stub), STUB_ARGS=str(recorded))
    before = {path: path.stat().st_mtime_ns for path in models.rglob("*")}
    result = _run([str(ENTRYPOINT), *triton["args"]], env, read_only=models)
    assert result.returncode == 0, result.stderr
    rendering = ["--model-config-name=cpu"] if rendered.overlay == "cpu" else []
    ports = ["--http-port", "8000", "--grpc-port", "8001", "--metrics-port", "8002"]
    assert recorded.read_text().splitlines() == [
        f"--model-repository={models / 'repository'}",
        *rendering,
        *ports,
        *triton["args"],
    ]
    assert {path: path.stat().st_mtime_ns for path in models.rglob("*")} == before

    # A pod whose choices differ from the Job's cannot prepare over it: it fails and starts nothing.
    recorded.unlink()
    result = _run([str(ENTRYPOINT)], {**env, "TRITON_TENSORRT": "1"}, read_only=models)
    assert result.returncode == 1 and "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr and not recorded.exists()


# --- The README ------------------------------------------------------------------------------------


def test_the_readme_names_real_paths():
    readme = (DEPLOY / "README.md").read_text()
    builds = set(re.findall(r"kustomize build (deploy/\S+)", readme))
    assert builds == {f"deploy/kubernetes/overlays/{overlay}" for overlay in OVERLAYS}
    assert all((ROOT / path / "kustomization.yaml").is_file() for path in builds)
    links = [link for link in re.findall(r"\]\(([^)]+)\)", readme) if not link.startswith("https://")]
    assert len(links) >= 9 and all((DEPLOY / link).is_file() for link in links), links
