"""The only place that speaks to Triton: model metadata, batched inference over gRPC, health.

Calls run on a pool of threads sharing one gRPC channel (each call builds its own request, and gRPC
channels are thread safe; one channel per thread kept far more native memory), so many requests
are in flight at once and Triton's dynamic batcher can merge them. A
request larger than a model's max_batch_size is split into chunks sent concurrently. Transient
failures (server unavailable, connection reset, a server stopping) are retried a bounded number of
times, then reported as one readable TritonError.

The channel balances requests, not connections, over every address of its target (gRPC's
round_robin policy): a `dns:///NAME:PORT` target (all addresses of NAME, such as a headless
Service's pods) or a comma-separated list of HOST:PORT. gRPC's outlier detection takes a server
whose requests fail (one that is stopping) out of the rotation, so retries land on the others.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlsplit

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from modelplane import contract
from orchestrator.errors import TritonError
from orchestrator.faces.detect import DetectorInput

RETRYABLE = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.RESOURCE_EXHAUSTED")
# Triton unloads its models first when it stops, and answers NOT_FOUND with this until it exits.
UNLOADING = "has no available versions"
GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
MAX_MESSAGE_BYTES = 2**31 - 1  # tritonclient's default channel arguments, which channel_args replaces
# Round robin over the target's addresses; an address that failed at least half of its requests in
# the last second (5 or more) rests 10 s, longer on each repeat; at most half of the addresses rest.
SERVICE_CONFIG = {
    "loadBalancingConfig": [
        {
            "outlier_detection_experimental": {
                "interval": "1s",
                "baseEjectionTime": "10s",
                "maxEjectionPercent": 50,
                "failurePercentageEjection": {
                    "threshold": 50,
                    "enforcementPercentage": 100,
                    "minimumHosts": 2,
                    "requestVolume": 5,
                },
                "childPolicy": [{"round_robin": {}}],
            }
        }
    ]
}
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    # A restarted server is found again within 2 s (gRPC's own backoff grows to 2 minutes).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
# A server that cannot be connected to at all: not retried, reported at once (TritonClient.unreachable).
UNREACHABLE = (
    "failed to connect",
    "connections to all backends failing",
    "Connection refused",
    "DNS resolution",
)
REQUIRED_MODELS = contract.REQUIRED
OPTIONAL_MODELS = (contract.ENHANCE,)


def grpc_target(url: str) -> str:
    """gRPC's target for a Triton URL: HOST:PORT and gRPC's own targets (dns:///NAME:PORT, ipv4:…)
    as they are; a comma-separated list of HOST:PORT as a fixed list of addresses, names resolved now
    (IPv4 addresses when every host has one, else IPv6)."""
    if "," not in url or url.startswith(GRPC_SCHEMES):
        return url
    endpoints = []
    for entry in (part.strip() for part in url.split(",")):
        try:
            parts = urlsplit(f"//{entry}")
            endpoints.append((parts.hostname, parts.port))
        except ValueError:
            endpoints.append((None, None))
        if not all(endpoints[-1]):
            raise TritonError(f"Triton URL {url!r}: {entry!r} is not HOST:PORT")
    hosts = [(_addresses(url, host, port), port) for host, port in endpoints]
    for version, scheme, form in ((4, "ipv4", "{}:{}"), (6, "ipv6", "[{}]:{}")):
        if all(any(a.version == version for a in addresses) for addresses, _ in hosts):
            listed = {
                form.format(a, port): None
                for addresses, port in hosts
                for a in addresses
                if a.version == version
            }
            return f"{scheme}:{','.join(listed)}"
    raise TritonError(f"Triton URL {url!r}: its hosts have no address family (IPv4, IPv6) in common")


def _addresses(url: str, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The host itself when it is an IP address, else its addresses from the system's resolver."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise TritonError(f"Triton URL {url!r}: cannot resolve {host}: {error.strerror}") from error
    return [ipaddress.ip_address(address[4][0]) for address in found]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # without the batch axis
    dtype: np.dtype


@dataclass(frozen=True)
class ModelInfo:
    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    max_batch_size: int


class TritonClient:
    """A gRPC client for the model plane; safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        retries: int = 5,
        in_flight: int = 8,
        observe: Callable[[str, float], None] | None = None,
    ):
        """`observe(model, seconds)`, when given, is told the duration of every inference call."""
        self.url = url
        self.observe = observe
        self.timeout = timeout
        self.retries = retries
        self._shared: grpcclient.InferenceServerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="triton")
        self._info: dict[str, ModelInfo] = {}
        self._parameters: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._shared is not None:
            self._shared.close()

    def _client(self) -> grpcclient.InferenceServerClient:
        with self._client_lock:
            if self._shared is None:
                self._shared = grpcclient.InferenceServerClient(
                    grpc_target(self.url), channel_args=CHANNEL_ARGS
                )
            return self._shared

    def _call(self, what: str, function, *args, **kwargs):
        """Call the gRPC client, retrying transient failures with a growing pause (at most 1 s)."""
        for attempt in range(self.retries + 1):
            try:
                return function(self._client(), *args, **kwargs)
            except InferenceServerException as error:
                status, text = str(error.status() or ""), str(error)
                if any(sign in text for sign in UNREACHABLE):
                    raise TritonError(self.unreachable(error)) from error
                transient = status in RETRYABLE or UNLOADING in text
                if attempt == self.retries or not transient:
                    reason = " ".join((error.message() or str(error)).split())
                    raise TritonError(f"Triton at {self.url}: {what} failed: {reason}") from error
                time.sleep(min(0.25 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    # --- metadata and health

    def unreachable(self, error: InferenceServerException) -> str:
        """One line for a server that cannot be connected to: where, why, and what to do."""
        reason = " ".join((error.message() or str(error)).split())
        cause = reason.rsplit("last error: ", 1)[-1][:200]
        return (
            f"Triton at {self.url} is not reachable ({cause}): start it (scripts/triton_local.sh start) "
            "or point FACESWAP_TRITON_URL (--triton-url) at its gRPC address"
        )

    def unavailable(self, timeout: float = 1.0) -> str | None:
        """Why the model plane cannot take work now, in one line naming the fix; None when it can.

        One call per required model, each waiting at most `timeout` seconds, never retried."""
        try:
            client = self._client()
            missing = [n for n in REQUIRED_MODELS if not client.is_model_ready(n, client_timeout=timeout)]
        except InferenceServerException as error:
            if any(sign in str(error) for sign in UNREACHABLE):
                return self.unreachable(error)
            reason = " ".join((error.message() or str(error)).split())[:200]
            return (
                f"Triton at {self.url} is not ready ({reason}): it is starting or stopping; "
                "wait, or check its log"
            )
        if missing:
            return (
                f"Triton at {self.url} is up but not ready: {', '.join(missing)} not loaded; wait while it "
                "loads them, or prepare the repository (python -m modelplane prepare) and restart it"
            )
        return None

    def model_info(self, name: str) -> ModelInfo:
        with self._lock:
            if name not in self._info:
                metadata = self._call(
                    f"metadata of {name}", lambda c: c.get_model_metadata(name, as_json=True)
                )
                config = self._call(f"config of {name}", lambda c: c.get_model_config(name, as_json=True))[
                    "config"
                ]
                batch = int(config.get("max_batch_size", 0))

                def tensors(entries):
                    return tuple(
                        TensorInfo(
                            t["name"],
                            tuple(int(d) for d in t["shape"][1 if batch else 0 :]),
                            triton_to_np_dtype(t["datatype"]),
                        )
                        for t in entries
                    )

                self._info[name] = ModelInfo(
                    name, tensors(metadata["inputs"]), tensors(metadata["outputs"]), batch
                )
        return self._info[name]

    def ready_models(self, names: Iterable[str]) -> dict[str, bool]:
        """Whether each model is READY; raises TritonError when the server is unreachable."""
        return {name: bool(self._call("readiness", lambda c, n=name: c.is_model_ready(n))) for name in names}

    def is_server_ready(self) -> bool:
        return bool(self._call("readiness", lambda c: c.is_server_ready()))

    @cached_property
    def detector_input(self) -> DetectorInput:
        """What face_detect takes: its input's size, or with any size accepted, the reference size
        and stride its configuration states (modelplane.prepare)."""
        height, width, _ = self.model_info(contract.DETECT).inputs[0].shape
        if height > 0 and width > 0:
            return DetectorInput((height, width))
        stated = contract.DetectorParameters.from_config(self.model_parameters(contract.DETECT))
        return DetectorInput((stated.height, stated.width), stated.stride, True)

    def model_parameters(self, name: str) -> dict[str, str]:
        """A model's configuration parameters (the model plane states each family's template, size,
        source kind there: modelplane.families)."""
        with self._lock:
            key = f"parameters:{name}"
            if key not in self._parameters:
                config = self._call(f"config of {name}", lambda c: c.get_model_config(name, as_json=True))
                found = config["config"].get("parameters", {})
                self._parameters[key] = {k: v.get("string_value", "") for k, v in found.items()}
            return self._parameters[key]

    def repository_index(self) -> dict[str, str]:
        """Every model of Triton's repository and its state (READY, UNAVAILABLE, ...)."""
        index = self._call("the repository index", lambda c: c.get_model_repository_index(as_json=True))
        return {m["name"]: m.get("state", "") for m in index.get("models", [])}

    def crop_size(self, model: str) -> int:
        """The square crop size an ensemble takes (face_embed, face_swap, face_enhance)."""
        return self.model_info(model).inputs[0].shape[0]

    # --- inference

    def _infer_one(self, model: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]

        def run(client):
            return client.infer(model, tensors, outputs=requested, client_timeout=self.timeout)

        start = time.perf_counter()
        result = self._call(f"inference on {model}", run)
        if self.observe is not None:
            self.observe(model, time.perf_counter() - start)
        return {name: result.as_numpy(name) for name in outputs}

    def infer(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a batch of any size: split by the model's max_batch_size, the chunks sent at once."""
        info = self.model_info(model)
        outputs = tuple(t.name for t in info.outputs)
        for tensor in (t for t in info.inputs if t.name in inputs):  # optional ones may be left out
            array = inputs[tensor.name]
            fits = len(array.shape[1:]) == len(tensor.shape) and all(
                d in (-1, size) for d, size in zip(tensor.shape, array.shape[1:], strict=False)
            )
            if array.dtype != tensor.dtype or not fits:  # -1: an axis of any size (the detector's)
                raise TritonError(
                    f"{model}: input {tensor.name!r} must be {np.dtype(tensor.dtype).name}"
                    f"{list(tensor.shape)} per item, got {array.dtype.name}{list(array.shape[1:])}"
                )
        total = len(next(iter(inputs.values())))
        step = info.max_batch_size or total
        if total <= step:  # the usual case: one request, sent from the calling thread
            return self._infer_one(model, inputs, outputs)
        chunks = [
            self._pool.submit(
                self._infer_one, model, {k: v[i : i + step] for k, v in inputs.items()}, outputs
            )
            for i in range(0, total, step)
        ]
        parts = [chunk.result() for chunk in chunks]
        return {name: np.concatenate([part[name] for part in parts]) for name in outputs}

    # --- the ensembles, by what they do

    def detect(self, canvases: np.ndarray, score_threshold: float | None = None) -> dict[str, np.ndarray]:
        """The faces of a batch of letterboxed frames, uint8 [B,H,W,3] BGR, in canvas pixels:
        `boxes`, `scores`, `landmarks`, `count` (see orchestrator.faces.detect)."""
        inputs = {contract.IMAGE: canvases}
        if score_threshold is not None:
            inputs[contract.SCORE_THRESHOLD] = np.full((len(canvases), 1), score_threshold, np.float32)
        return self.infer(contract.DETECT, inputs)

    def embed(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Identity embeddings of aligned crops, uint8 [B,S,S,3] BGR: unit length [B,D], and the
        recognizer's raw output [B,D] they are normalised from."""
        if len(crops) == 0:
            empty = np.zeros((0, self.model_info(contract.EMBED).outputs[0].shape[0]), np.float32)
            return empty, empty
        found = self.infer(contract.EMBED, {contract.CROP: crops})
        if contract.RAW_EMBEDDING not in found:
            raise TritonError(
                "face_embed has no raw_embedding output: the model repository predates it; prepare it again "
                "(python -m modelplane prepare --force)"
            )
        return found[contract.EMBEDDING], found[contract.RAW_EMBEDDING]

    def latent(self, embedding: np.ndarray, model: str = contract.LATENT) -> np.ndarray:
        """The swapper's source latent [D] of one identity's raw embedding [D]."""
        return self.latents(embedding[None], model)[0]

    def latents(self, embeddings: np.ndarray, model: str = contract.LATENT) -> np.ndarray:
        """The swapper's source latents [N,D] of N raw identity embeddings [N,D], in one call."""
        vectors = np.asarray(embeddings, np.float32)
        return self.infer(model, {contract.EMBEDDING: vectors})[contract.LATENT_VECTOR]

    def swap(self, crops: np.ndarray, source: np.ndarray, model: str = contract.SWAP) -> np.ndarray:
        """Swapped crops for uint8 [B,S,S,3] crops, to one source for all or one per crop: a latent
        ([D] or [B,D]), or for families whose source is an image (`source` input) an aligned uint8
        source crop ([S,S,3] or [B,S,S,3])."""
        kinds = (contract.LATENT_VECTOR, contract.SOURCE_CROP)
        tensor = next(t for t in self.model_info(model).inputs if t.name in kinds)
        source = np.asarray(source)
        if source.ndim == len(tensor.shape):  # one source for every crop
            source = source[None]
        sources = np.broadcast_to(source, (len(crops), *source.shape[1:])).astype(tensor.dtype)
        return self.infer(model, {contract.CROP: crops, tensor.name: sources})[contract.SWAPPED]

    def enhance(
        self, crops: np.ndarray, weight: float | None = None, model: str = contract.ENHANCE
    ) -> np.ndarray:
        """Enhanced crops; `weight` reaches families with a fidelity weight (CodeFormer) only."""
        inputs = {contract.CROP: crops}
        if weight is not None and any(t.name == contract.WEIGHT for t in self.model_info(model).inputs):
            inputs[contract.WEIGHT] = np.full((len(crops), 1), weight, np.float32)
        return self.infer(model, inputs)[contract.ENHANCED]
