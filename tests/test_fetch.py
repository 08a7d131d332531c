"""modelplane.fetch against a loopback HTTP server that each test scripts."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelplane.fetch import LOCK_FILE, FetchError, fetch_models, main
from modelplane.manifest import Manifest, load_manifest

SIZE = 300_000
# name: (role, payload seed, checksum the manifest gives)
MODELS = {
    "det": ("detector", 1, "crc32"),
    "rec": ("recognizer", 2, "sha256"),
    "swap": ("swapper", 3, "sha256"),
    "swap_fp16": ("swapper", 4, "crc32"),
    "enh": ("enhancer", 5, "crc32"),
    "ghost_swap": ("swapper", 6, "sha256"),
    "conv": ("converter", 7, "crc32"),
}
FAMILIES = {"ghost_swap": 'family = "ghost"\nconverter = "conv"'}  # more manifest lines
DEFAULTS = {"detector": "det", "recognizer": "rec", "swapper": "swap", "enhancer": "enh"}


def payload(seed: int) -> bytes:
    return random.Random(seed).randbytes(SIZE)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Script:
    """What the loopback server serves, and the requests it saw as (path, Range header)."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before breaking off, once
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def ranges(self, name: str) -> list[str | None]:
        return [rng for path, rng in self.requests if path == f"/{name}"]


class Handler(BaseHTTPRequestHandler):
    """GET with Range support (HTTP/1.0: the connection closes after each response)."""

    def do_GET(self) -> None:
        script: Script = self.server.script  # type: ignore[attr-defined]
        requested = self.headers.get("Range")
        script.requests.append((self.path, requested))
        body = script.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if requested and not script.ignore_range:
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = script.cut_after.pop(self.path, None)
        self.wfile.write(body[start:] if cut is None else body[start : start + cut])

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Script:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.script = Script(base=f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.script  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def published(server: Script) -> Script:
    """The server publishing every model, with a CRC32 companion (upper case, newline) where due."""
    for name, (_, seed, checksum) in MODELS.items():
        server.files[f"/{name}.onnx"] = payload(seed)
        if checksum == "crc32":
            server.files[f"/{name}.hash"] = f"{zlib.crc32(payload(seed)):08X}\n".encode()
    return server


def write_manifest(path: Path, base: str) -> Path:
    lines = ["[roles]", *(f'{role} = "{name}"' for role, name in DEFAULTS.items())]
    for name, (role, seed, checksum) in MODELS.items():
        lines += ["", f"[models.{name}]", f'role = "{role}"', f'file = "{name}.onnx"']
        lines += [FAMILIES[name]] if name in FAMILIES else []
        lines.append(f'url = "{base}/{name}.onnx"')
        if checksum == "sha256":
            lines.append(f'sha256 = "{sha256(payload(seed))}"')
        else:
            lines.append(f'crc32_url = "{base}/{name}.hash"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def manifest_path(tmp_path: Path, server: Script) -> Path:
    return write_manifest(tmp_path / "models.toml", server.base)


@pytest.fixture
def manifest(manifest_path: Path) -> Manifest:
    return load_manifest(manifest_path)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def fetch(manifest: Manifest, models_dir: Path, **options) -> dict[str, Path]:
    return fetch_models(manifest, models_dir, timeout=5, progress=False, **options)


def read_lock(models_dir: Path) -> dict:
    return json.loads((models_dir / LOCK_FILE).read_text())


def listing(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_sha256_model_is_downloaded_and_locked(published: Script, manifest: Manifest, models_dir: Path):
    paths = fetch(manifest, models_dir, roles=("recognizer",))
    assert paths == {"recognizer": models_dir / "rec.onnx"}
    assert paths["recognizer"].read_bytes() == payload(2)
    assert read_lock(models_dir) == {
        "recognizer": {
            "model": "rec",
            "file": "rec.onnx",
            "source": published.url("rec.onnx"),
            "sha256": sha256(payload(2)),
            "size": SIZE,
        }
    }
    assert listing(models_dir) == [LOCK_FILE, "rec.onnx"]


def test_crc32_model_is_verified_and_its_sha256_locked(
    published: Script, manifest: Manifest, models_dir: Path
):
    paths = fetch(manifest, models_dir, roles=("detector",))
    assert paths["detector"].read_bytes() == payload(1)
    assert published.ranges("det.hash") == [None]
    assert read_lock(models_dir)["detector"]["sha256"] == sha256(payload(1))
    assert listing(models_dir) == ["det.onnx", LOCK_FILE]


@pytest.mark.parametrize(
    ("role", "name", "expected"),
    [
        ("recognizer", "rec", f"SHA-256 {sha256(payload(2))}"),
        ("detector", "det", f"CRC32 {zlib.crc32(payload(1)):08x}"),
    ],
    ids=["sha256", "crc32"],
)
def test_wrong_bytes_are_rejected_and_deleted(
    published: Script, manifest: Manifest, models_dir: Path, role: str, name: str, expected: str
):
    published.files[f"/{name}.onnx"] = payload(99)
    with pytest.raises(FetchError) as caught:
        fetch(manifest, models_dir, roles=(role,))
    message = str(caught.value)
    assert f"{role} model {name!r}" in message
    assert f"expected {expected}, got " in message and "\n" not in message
    assert listing(models_dir) == []


def test_broken_download_resumes_with_range(published: Script, manifest: Manifest, models_dir: Path):
    published.cut_after["/swap.onnx"] = 100_000
    paths = fetch(manifest, models_dir, roles=("swapper",))
    assert published.ranges("swap.onnx") == [None, "bytes=100000-"]
    assert paths["swapper"].read_bytes() == payload(3)
    assert listing(models_dir) == [LOCK_FILE, "swap.onnx"]


def test_full_response_to_a_range_request_starts_over(
    published: Script, manifest: Manifest, models_dir: Path
):
    models_dir.mkdir()
    (models_dir / "swap.onnx.part").write_bytes(b"stale bytes")
    published.ignore_range = True
    paths = fetch(manifest, models_dir, roles=("swapper",))
    assert published.ranges("swap.onnx") == ["bytes=11-"]
    assert paths["swapper"].read_bytes() == payload(3)


def test_http_404_is_a_fetch_error(published: Script, manifest: Manifest, models_dir: Path):
    del published.files["/rec.onnx"]
    with pytest.raises(FetchError) as caught:
        fetch(manifest, models_dir, roles=("recognizer",))
    message = str(caught.value)
    assert "HTTP 404" in message and published.url("rec.onnx") in message and "'rec'" in message
    assert listing(models_dir) == []


def test_unreachable_host_gives_one_line(tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    manifest_path = write_manifest(tmp_path / "models.toml", f"http://127.0.0.1:{port}")
    with pytest.raises(FetchError) as caught:
        fetch(load_manifest(manifest_path), models_dir, roles=("recognizer",))
    message = str(caught.value)
    assert message.startswith(f"cannot reach 127.0.0.1:{port} to fetch recognizer model 'rec' (")
    assert message.endswith("pass a local file with --recognizer PATH")
    assert "\n" not in message

    argv = ["--models-dir", str(models_dir), "--manifest", str(manifest_path), "--timeout", "5"]
    assert main([*argv, "--roles", "detector,recognizer"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"error: cannot reach 127.0.0.1:{port} to fetch detector model 'det' (")
    assert line.endswith("--detector PATH") and "Traceback" not in err


def test_second_run_makes_no_requests(published: Script, manifest: Manifest, models_dir: Path):
    choices = {"swapper": "swap_fp16"}
    first = fetch(manifest, models_dir, choices=choices)
    lock = read_lock(models_dir)
    assert set(lock) == set(DEFAULTS) and lock["swapper"]["model"] == "swap_fp16"
    published.requests.clear()
    assert fetch(manifest, models_dir, choices=choices) == first
    assert published.requests == []
    assert read_lock(models_dir) == lock


def test_local_file_choice_is_copied_and_locked(
    published: Script, manifest: Manifest, models_dir: Path, tmp_path: Path
):
    own = tmp_path / "mine" / "my_swapper.onnx"
    own.parent.mkdir()
    own.write_bytes(payload(7))
    paths = fetch(manifest, models_dir, choices={"swapper": str(own)}, roles=("swapper",))
    assert paths["swapper"] == models_dir / "my_swapper.onnx"
    assert paths["swapper"].read_bytes() == payload(7) and own.exists()
    assert read_lock(models_dir)["swapper"] == {
        "model": "my_swapper",
        "file": "my_swapper.onnx",
        "source": str(own.resolve()),
        "sha256": sha256(payload(7)),
        "size": SIZE,
    }
    assert published.requests == []


def test_missing_local_file_is_a_fetch_error(manifest: Manifest, models_dir: Path, tmp_path: Path):
    missing = tmp_path / "nowhere" / "swapper.onnx"
    with pytest.raises(FetchError, match="no such file") as caught:
        fetch(manifest, models_dir, choices={"swapper": str(missing)}, roles=("swapper",))
    assert str(missing) in str(caught.value)


def test_url_choice_is_downloaded_and_locked(published: Script, manifest: Manifest, models_dir: Path):
    published.files["/custom/gpen_512.onnx"] = payload(8)
    url = published.url("custom/gpen_512.onnx")
    paths = fetch(manifest, models_dir, choices={"enhancer": url}, roles=("enhancer",))
    assert paths["enhancer"] == models_dir / "gpen_512.onnx"
    assert paths["enhancer"].read_bytes() == payload(8)
    record = read_lock(models_dir)["enhancer"]
    assert (record["model"], record["source"], record["sha256"]) == ("gpen_512", url, sha256(payload(8)))
    published.requests.clear()
    fetch(manifest, models_dir, choices={"enhancer": url}, roles=("enhancer",))
    assert published.requests == []


@pytest.mark.parametrize(
    ("role", "name", "seed"), [("recognizer", "rec", 2), ("detector", "det", 1)], ids=["sha256", "crc32"]
)
def test_corrupted_file_is_fetched_again(
    published: Script, manifest: Manifest, models_dir: Path, role: str, name: str, seed: int
):
    path = fetch(manifest, models_dir, roles=(role,))[role]
    path.write_bytes(payload(98))
    published.requests.clear()
    assert fetch(manifest, models_dir, roles=(role,))[role].read_bytes() == payload(seed)
    assert published.ranges(f"{name}.onnx") == [None]
    assert read_lock(models_dir)[role]["sha256"] == sha256(payload(seed))


def test_cli_fetches_and_prints_the_table(
    published: Script, manifest_path: Path, models_dir: Path, capsys: pytest.CaptureFixture
):
    argv = ["--models-dir", str(models_dir), "--manifest", str(manifest_path), "--swapper", "swap_fp16"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{role:<10}  {models_dir / (name + '.onnx')}"
        for role, name in {**DEFAULTS, "swapper": "swap_fp16"}.items()
    ]
    assert "fetching swap_fp16.onnx ... done, 0.3 MB" in err.splitlines()


def test_cli_fetches_the_converter_a_swappers_family_needs(
    published: Script, manifest_path: Path, models_dir: Path, capsys: pytest.CaptureFixture
):
    argv = ["--models-dir", str(models_dir), "--manifest", str(manifest_path), "--roles", "swapper"]
    assert main([*argv, "--swapper", "ghost_swap"]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = [("swapper", "ghost_swap.onnx"), ("converter", "conv.onnx")]
    assert out == [f"{role:<10}  {models_dir / file}" for role, file in expected]
    assert (models_dir / "conv.onnx").read_bytes() == payload(MODELS["conv"][1])
    assert read_lock(models_dir)["converter"]["model"] == "conv"
    # a swapper whose family needs no converter fetches none
    other = models_dir.parent / "other"
    published.requests.clear()
    assert main(["--models-dir", str(other), "--manifest", str(manifest_path), "--roles", "swapper"]) == 0
    assert listing(other) == sorted([LOCK_FILE, "swap.onnx"])
    assert published.ranges("conv.onnx") == []


def test_cli_refuses_a_model_of_another_role(
    manifest_path: Path, models_dir: Path, capsys: pytest.CaptureFixture
):
    argv = ["--models-dir", str(models_dir), "--manifest", str(manifest_path), "--swapper", "det"]
    assert main([*argv, "--roles", "swapper"]) == 1
    assert capsys.readouterr().err == "error: model 'det' is a detector, not a swapper\n"


def test_tokens_in_urls_stay_out_of_messages_and_the_lock(
    published: Script, manifest: Manifest, models_dir: Path
):
    published.files["/gated.onnx?token=s3cret"] = payload(9)
    url = published.url("gated.onnx?token=s3cret")
    fetch(manifest, models_dir, choices={"enhancer": url}, roles=("enhancer",))
    assert (models_dir / "gated.onnx").read_bytes() == payload(9)
    assert "s3cret" not in (models_dir / LOCK_FILE).read_text()
    with pytest.raises(FetchError) as caught:
        fetch(
            manifest,
            models_dir,
            choices={"swapper": published.url("missing.onnx?token=s3cret")},
            roles=("swapper",),
        )
    assert "404" in str(caught.value) and "s3cret" not in str(caught.value)
