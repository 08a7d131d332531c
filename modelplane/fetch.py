"""Download the model file of each role into a models directory, verify it and record it in a lock file.

A download goes to ``<file>.part`` and resumes from there; the final file appears only once verified.
``models.lock.json`` records each role's model, file, source, SHA-256 and size, so that a later run
checks the files present against it without touching the network.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlsplit
from urllib.request import Request, urlopen

from modelplane.errors import FetchError, ModelPlaneError
from modelplane.families import CONVERTER_ROLE
from modelplane.manifest import DEFAULT_MANIFEST, Manifest, load_manifest
from modelplane.roles import OPTIONAL_ROLES, REQUIRED_ROLES

LOCK_FILE = "models.lock.json"
RETRIES = 3
CHUNK = 1 << 20
USER_AGENT = "triton-faceswap-fetch"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


@dataclass(frozen=True)
class _Source:
    """What fills one role: a manifest entry, a URL or a local file."""

    role: str
    name: str
    file: str
    source: str  # a URL, or the absolute path of a local file
    local: bool = False
    sha256: str | None = None
    crc32_url: str | None = None

    @property
    def label(self) -> str:
        return f"{self.role} model {self.name!r}"


class _Progress:
    """One file's progress on stderr: a live percentage on a terminal, else one line once done."""

    def __init__(self, file: str, enabled: bool) -> None:
        self.file = file
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.done = 0
        self.total: int | None = None
        self.shown = -1

    def start(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total

    def advance(self, count: int) -> None:
        self.done += count
        if self.live and self.total:
            percent = min(100, self.done * 100 // self.total)
            if percent != self.shown:
                self.shown = percent
                print(f"\rfetching {self.file} {percent:3d}%", end="", file=sys.stderr, flush=True)

    def end(self, size: int | None) -> None:
        """Print the summary line of a fetched file, or end the percentage line of a failed one."""
        if size is not None and self.enabled:
            start = "\r" if self.live else ""
            print(f"{start}fetching {self.file} ... done, {size / 1e6:.1f} MB", file=sys.stderr)
        elif self.shown >= 0:
            print(file=sys.stderr)


def fetch_models(
    manifest: Manifest,
    models_dir: Path,
    *,
    choices: dict[str, str] | None = None,
    roles: Iterable[str] = REQUIRED_ROLES,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict[str, Path]:
    """Make each role's model file present and verified in `models_dir`; return role -> path.

    `choices[role]` is a manifest model name, an http(s) URL or a local file; the manifest's default
    otherwise. `progress` reports each download on stderr; false keeps quiet.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    lock_path = models_dir / LOCK_FILE
    lock = _read_lock(lock_path)
    paths = {}
    for role in roles:
        source = _resolve(manifest, role, (choices or {}).get(role))
        target = models_dir / source.file
        if source.local:
            sha = _copy_local(source, target)
        else:
            record = lock.get(role, {})
            recorded = record.get("file") == source.file and record.get("source") == shown(source.source)
            known = source.sha256 or (record.get("sha256") if recorded else None)
            sha = _fetch_url(source, target, known, timeout, _Progress(source.file, progress))
        entry = {
            "model": source.name,
            "file": source.file,
            "source": shown(source.source),
            "sha256": sha,
            "size": target.stat().st_size,
        }
        if lock.get(role) != entry:
            lock[role] = entry
            _write_lock(lock_path, lock)
        paths[role] = target
    return paths


def _resolve(manifest: Manifest, role: str, choice: str | None) -> _Source:
    """The source a choice names: a manifest model, else a URL, else a local file."""
    if choice is None or choice in manifest.models:
        entry = manifest.for_role(role, choice)
        sha256 = entry.sha256.lower() if entry.sha256 else None
        return _Source(role, entry.name, entry.file, entry.url, sha256=sha256, crc32_url=entry.crc32_url)
    if urlsplit(choice).scheme in ("http", "https"):
        file = PurePosixPath(unquote(urlsplit(choice).path)).name
        if file in ("", ".", ".."):
            raise FetchError(f"{role}: cannot tell a file name from the URL {choice}")
        return _Source(role, PurePosixPath(file).stem, file, choice)
    path = Path(choice).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(name for name, entry in manifest.models.items() if entry.role == role))
        raise FetchError(
            f"{role}: no such file {str(path)!r}, and {choice!r} is no {role} model of the manifest ({known})"
        )
    path = path.resolve()
    return _Source(role, path.stem, path.name, str(path), local=True)


def _copy_local(source: _Source, target: Path) -> str:
    """Copy a local file to `target` unless it is already there; return its SHA-256."""
    sha = _digests(Path(source.source))[0]
    if target.resolve() != Path(source.source) and not (target.is_file() and _digests(target)[0] == sha):
        part = _part(target)
        shutil.copyfile(source.source, part)
        os.replace(part, target)
    return sha


def _fetch_url(
    source: _Source, target: Path, known_sha: str | None, timeout: float, progress: _Progress
) -> str:
    """Make `target` a verified download of `source`, keeping a file already good; return its SHA-256."""
    expected_crc = None
    if target.is_file():
        sha, crc = _digests(target)
        if known_sha is not None and sha == known_sha:
            return sha
        if known_sha is None and source.crc32_url:
            expected_crc = _read_crc32(source, timeout)
            if crc == expected_crc:
                return sha
        target.unlink()
    if source.sha256 is None and source.crc32_url and expected_crc is None:
        expected_crc = _read_crc32(source, timeout)
    part = _part(target)
    size = None
    try:
        _download(source, part, timeout, progress)
        sha, crc = _digests(part)
        if source.sha256 is not None and sha != source.sha256:
            _reject(source, part, f"SHA-256 {source.sha256}", sha)
        if expected_crc is not None and crc != expected_crc:
            _reject(source, part, f"CRC32 {expected_crc:08x}", f"{crc:08x}")
        os.replace(part, target)
        size = target.stat().st_size
    finally:
        progress.end(size)
    return sha


def _reject(source: _Source, part: Path, expected: str, got: str) -> None:
    part.unlink(missing_ok=True)
    raise FetchError(
        f"{source.label}: checksum mismatch for {source.file} from {shown(source.source)}: "
        f"expected {expected}, got {got}; the download was deleted"
    )


def _download(source: _Source, part: Path, timeout: float, progress: _Progress) -> None:
    """Download `source` into `part`, resuming what is there and retrying a broken transfer."""
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        request = Request(source.source, headers={"User-Agent": USER_AGENT})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = _open(source, request, timeout)
            if response is None:  # the part is complete or stale: start over
                part.unlink()
                continue
            with response:
                _receive(response, part, offset, progress)
            return
        except (OSError, http.client.HTTPException) as error:
            failures += 1
            if failures > RETRIES:
                raise FetchError(
                    f"{source.label}: the download from {shown(source.source)} broke off {failures} times "
                    f"({_reason(error)})"
                ) from error


def _receive(response: http.client.HTTPResponse, part: Path, offset: int, progress: _Progress) -> None:
    """Write the body to `part`: appended when a 206 continues it at `offset`, else from scratch."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.fullmatch(content_range)
        if not match or int(match[1]) != offset:
            part.unlink()
            raise http.client.HTTPException(f"unexpected Content-Range {content_range!r}")
        total = None if match[2] == "*" else int(match[2])
        mode = "ab"
    else:
        offset, mode = 0, "wb"
        total = int(length) if length else None
    progress.start(offset, total)
    received = 0
    with part.open(mode) as stream:
        while chunk := response.read(CHUNK):
            stream.write(chunk)
            received += len(chunk)
            progress.advance(len(chunk))
    if length and received < int(length):
        raise ConnectionError(f"connection closed {int(length) - received} bytes short")


def _read_crc32(source: _Source, timeout: float) -> int:
    """The CRC32 that the publisher's companion file gives."""
    url = source.crc32_url
    request = Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with _open(source, request, timeout) as response:
            text = response.read(1024).decode("ascii", "replace").strip()
    except (OSError, http.client.HTTPException) as error:
        raise FetchError(
            f"{source.label}: cannot read the checksum file {shown(url)} ({_reason(error)})"
        ) from error
    if not re.fullmatch(r"[0-9a-fA-F]{8}", text):
        raise FetchError(f"{source.label}: {shown(url)} holds no CRC32 of 8 hex digits but {text[:40]!r}")
    return int(text, 16)


def _open(source: _Source, request: Request, timeout: float) -> http.client.HTTPResponse | None:
    """Open `request`; None when the server cannot satisfy its Range; HTTP errors and no network raise."""
    try:
        return urlopen(request, timeout=timeout)
    except HTTPError as error:
        error.close()
        if error.code == 416 and request.has_header("Range"):
            return None
        message = f"{source.label}: HTTP {error.code} {error.reason} from {shown(request.full_url)}"
        raise FetchError(message) from error
    except URLError as error:
        host = urlsplit(shown(request.full_url)).netloc
        raise FetchError(
            f"cannot reach {host} to fetch {source.label} ({_reason(error.reason)}); "
            f"check the network or pass a local file with --{source.role} PATH"
        ) from error


def shown(url: str) -> str:
    """A URL fit for logs and the lock file: without user, password, query or fragment (tokens)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _reason(error: object) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _digests(path: Path) -> tuple[str, int]:
    """The SHA-256 (hex) and CRC32 of a file."""
    sha, crc = hashlib.sha256(), 0
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            sha.update(chunk)
            crc = zlib.crc32(chunk, crc)
    return sha.hexdigest(), crc


def _part(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _read_lock(path: Path) -> dict[str, dict[str, Any]]:
    try:
        lock = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise FetchError(f"cannot read the lock file {path} ({error}); delete it to check afresh") from error
    if not isinstance(lock, dict):
        raise FetchError(f"the lock file {path} holds no JSON object; delete it to check afresh")
    return lock


def _write_lock(path: Path, lock: dict[str, dict[str, Any]]) -> None:
    """Write the lock atomically: a temporary file beside it, then os.replace."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o644)
        with os.fdopen(handle, "w") as stream:
            json.dump(lock, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _with_converter(
    manifest: Manifest, roles: list[str], choices: dict[str, str], converter: str | None
) -> tuple[list[str], dict[str, str]]:
    """`roles` and `choices` with the swapper's converter added when the swapper is fetched and its
    family needs one: `converter` when given, else the one the manifest names for the chosen swapper."""
    if "swapper" not in roles:
        return roles, choices
    entry = manifest.models.get(choices.get("swapper") or manifest.roles["swapper"])
    converter = converter or (entry.converter if entry is not None and entry.role == "swapper" else None)
    if converter is None:
        return roles, choices
    return [*roles, CONVERTER_ROLE], choices | {CONVERTER_ROLE: converter}


def main(argv: list[str] | None = None) -> int:
    """Fetch and verify the model files: 0 on success, 1 on an error, 130 when interrupted."""
    parser = argparse.ArgumentParser(
        prog="fetch_models", description="Download and verify the model file of each role."
    )
    parser.add_argument(
        "--models-dir", type=Path, default=Path("models"), metavar="DIR", help="default: ./models"
    )
    parser.add_argument(
        "--manifest", type=Path, default=DEFAULT_MANIFEST, metavar="PATH", help="model manifest"
    )
    for role in REQUIRED_ROLES + OPTIONAL_ROLES:
        parser.add_argument(
            f"--{role}", metavar="MODEL|URL|PATH", help=f"the {role}: a manifest model, a URL or a local file"
        )
    parser.add_argument(
        "--roles",
        default=",".join(REQUIRED_ROLES),
        metavar="LIST",
        help=f"comma-separated (default: the required ones; optional: {', '.join(OPTIONAL_ROLES)})",
    )
    parser.add_argument(
        "--converter",
        metavar="MODEL|URL|PATH",
        help="the swapper's converter (ghost, simswap, hififace); default: the one the manifest names for it",
    )
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="network timeout")
    args = parser.parse_args(argv)
    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    unknown = sorted(set(roles) - set(REQUIRED_ROLES + OPTIONAL_ROLES))
    if unknown or not roles:
        known = ", ".join(REQUIRED_ROLES + OPTIONAL_ROLES)
        parser.error(f"--roles: unknown {', '.join(unknown) or '(none)'}; choose from {known}")
    choices = {role: getattr(args, role) for role in REQUIRED_ROLES + OPTIONAL_ROLES if getattr(args, role)}
    try:
        manifest = load_manifest(args.manifest)
        roles, choices = _with_converter(manifest, roles, choices, args.converter)
        paths = fetch_models(manifest, args.models_dir, choices=choices, roles=roles, timeout=args.timeout)
    except (ModelPlaneError, OSError) as error:  # OSError: the environment's (disks, permissions)
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; run again to resume the download", file=sys.stderr)
        return 130
    for role, path in paths.items():
        print(f"{role:<10}  {path}")
    return 0
