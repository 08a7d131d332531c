"""A Python client of the HTTP API: swaps, jobs with their progress and results, models, faces, live.

    from orchestrator.client import FaceSwapClient
    from orchestrator.options import SwapOptions

    with FaceSwapClient("http://localhost:8080") as client:
        swapped = client.swap(["me.jpg"], "photo.jpg", SwapOptions(selector="one"))
        swapped.save("swapped.jpg")
        job = client.submit(["me.jpg"], "clip.mp4")
        client.wait(job.id, on_progress=lambda p: print(p["progress"]))
        client.download(job.id, "swapped.mp4")

Options are the service's own models (`SwapOptions`, `VideoOptions`): a value the service would
refuse is refused here, before anything is sent. A `503` (Triton down or loading, the job store
busy) is retried after the server's `Retry-After`, a bounded number of times; any other refusal
raises `ApiError` with the service's one-line `detail`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import BaseModel

from orchestrator.api.schemas import JobStatus
from orchestrator.errors import FaceSwapError
from orchestrator.options import SwapOptions, VideoOptions

MAX_RETRY_WAIT = 30.0  # seconds, whatever Retry-After says
MAX_LIVE_MESSAGE = 64 * 2**20  # bytes of one swapped frame received
ENDED = ("succeeded", "failed", "cancelled", "expired")
FilePath = str | Path


class ApiError(FaceSwapError):
    """The service refused a request: `status` and its `detail`."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Swapped:
    """The result of a synchronous swap."""

    image: bytes
    media_type: str
    faces_found: int
    faces_swapped: int
    warnings: list[str] = field(default_factory=list)

    def save(self, path: FilePath) -> Path:
        path = Path(path)
        path.write_bytes(self.image)
        return path


def form_fields(*options: BaseModel | None) -> dict[str, str | list[str]]:
    """Options as the multipart fields of the API: only what differs from the defaults."""
    fields: dict[str, str | list[str]] = {}
    for model in (o for o in options if o is not None):
        for name, value in model.model_dump(mode="json", exclude_defaults=True).items():
            fields[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return fields


class FaceSwapClient:
    """The HTTP API of one service (or a load balancer in front of several)."""

    def __init__(
        self,
        url: str = "http://localhost:8080",
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self.retries = retries

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> FaceSwapClient:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    # --- requests

    def _request(
        self, method: str, path: str, files: Callable[[ExitStack], list] | None = None, **kwargs
    ) -> httpx.Response:
        """Send, retrying a 503 after its Retry-After; ApiError for any other refusal. `files` makes
        the multipart files anew for each attempt (their streams are read by the one before)."""
        for attempt in range(self.retries + 1):
            with ExitStack() as opened:
                sent = files(opened) if files is not None else None
                response = self.http.request(method, path, files=sent, **kwargs)
            if response.status_code != 503 or attempt == self.retries:
                break
            time.sleep(_retry_after(response))
        if response.is_error:
            raise ApiError(response.status_code, _detail(response))
        return response

    @staticmethod
    def _uploads(source: Sequence[FilePath], target: FilePath | None, reference: FilePath | None):
        def open_all(opened: ExitStack) -> list:
            parts = [("source", path) for path in source] + [("target", target), ("reference", reference)]
            return [
                (name, (Path(path).name, opened.enter_context(open(path, "rb"))))
                for name, path in parts
                if path is not None
            ]

        return open_all

    # --- swaps and jobs

    def swap(
        self,
        source: Sequence[FilePath],
        target: FilePath,
        options: SwapOptions | None = None,
        *,
        reference: FilePath | None = None,
        output_format: str | None = None,
    ) -> Swapped:
        """Swap the faces of one image, synchronously."""
        data = form_fields(options)
        if output_format:
            data["output_format"] = output_format
        response = self._request("POST", "/v1/swap", self._uploads(source, target, reference), data=data)
        warnings = response.headers.get("x-warnings")
        return Swapped(
            response.content,
            response.headers["content-type"],
            int(response.headers["x-faces-found"]),
            int(response.headers["x-faces-swapped"]),
            warnings.split("; ") if warnings else [],
        )

    def submit(
        self,
        source: Sequence[FilePath],
        target: FilePath,
        options: SwapOptions | None = None,
        video: VideoOptions | None = None,
        *,
        reference: FilePath | None = None,
        container: str | None = None,
        output_format: str | None = None,
    ) -> JobStatus:
        """Queue an image or video swap as a job."""
        data = form_fields(options, video)
        data.update({k: v for k, v in (("container", container), ("output_format", output_format)) if v})
        response = self._request("POST", "/v1/jobs", self._uploads(source, target, reference), data=data)
        return JobStatus.model_validate(response.json())

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def jobs(self, state: str | None = None, limit: int = 50, offset: int = 0) -> list[JobStatus]:
        params = {"limit": limit, "offset": offset} | ({"state": state} if state else {})
        listed = self._request("GET", "/v1/jobs", params=params).json()["jobs"]
        return [JobStatus.model_validate(job) for job in listed]

    def events(self, job_id: str) -> Iterator[tuple[str, dict]]:
        """The job's server-sent events, (`progress` | `end` | `gone`, data), until it ends."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            if response.is_error:
                response.read()
                raise ApiError(response.status_code, _detail(response))
            event, data = "message", []
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").strip())
                elif not line and data:
                    yield event, json.loads("\n".join(data))
                    event, data = "message", []

    def wait(self, job_id: str, on_progress: Callable[[dict], None] | None = None) -> JobStatus:
        """Follow the job's events until it ends; its final status (check `state` and `error`).
        `on_progress` gets each status on the way, the final one included."""
        for event, data in self.events(job_id):
            if event == "gone":
                raise ApiError(410, data["detail"])
            if on_progress is not None:
                on_progress(data)
            if event == "end":
                return JobStatus.model_validate(data)
        return self.job(job_id)  # the stream ended early (a proxy's timeout): ask once more

    def download(self, job_id: str, path: FilePath) -> Path:
        """Write a finished job's result to `path`, whole or not at all."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.part")
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/result") as response:
                if response.is_error:
                    response.read()
                    raise ApiError(response.status_code, _detail(response))
                with open(partial, "wb") as stream:
                    for chunk in response.iter_bytes(1 << 20):
                        stream.write(chunk)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job; delete a finished one."""
        self._request("DELETE", f"/v1/jobs/{job_id}")

    # --- what the service serves

    def models(self) -> dict:
        return self._request("GET", "/v1/models").json()

    def faces(self, target: FilePath, *, frame: int = 0, score_threshold: float | None = None) -> dict:
        """The faces of an image (or a video's frame), with the ids a face map names."""
        data = {"frame": str(frame)} | ({"score_threshold": str(score_threshold)} if score_threshold else {})
        return self._request("POST", "/v1/faces", self._uploads([], target, None), data=data).json()

    def live_info(self) -> dict:
        """Limits and default options of live sessions."""
        return self._request("GET", "/v1/live").json()

    @contextmanager
    def live(
        self, source: Sequence[FilePath], options: SwapOptions | None = None, detect_every: int | None = None
    ) -> Iterator[LiveSession]:
        """A live session: `session.swap(jpeg_bytes)` returns (header, swapped bytes) per frame."""
        from websockets.sync.client import connect

        url = str(self.http.base_url).replace("http", "ws", 1).rstrip("/") + "/v1/live"
        opening: dict = {
            "type": "start",
            "sources": [base64.b64encode(Path(path).read_bytes()).decode() for path in source],
            "options": (options or SwapOptions()).model_dump(mode="json", exclude_defaults=True),
        }
        if detect_every is not None:
            opening["detect_every"] = detect_every
        if "X-API-Key" in self.http.headers:
            opening["api_key"] = self.http.headers["X-API-Key"]
        with connect(url, max_size=MAX_LIVE_MESSAGE) as socket:
            socket.send(json.dumps(opening))
            ready = _live_message(socket)
            yield LiveSession(socket, ready)
            socket.send(json.dumps({"type": "stop"}))


class LiveSession:
    """An open live session; `ready` is the server's opening answer."""

    def __init__(self, socket, ready: dict):
        self.socket = socket
        self.ready = ready

    def swap(self, frame: bytes) -> tuple[dict, bytes]:
        """Send one JPEG or WebP frame and wait for its answer: the header and the swapped frame."""
        self.socket.send(frame)
        header = _live_message(self.socket)
        return header, self.socket.recv()


def _live_message(socket) -> dict:
    """The next text message. ApiError for an error: this frame's (status 422), or the session's end
    (the close code, with the whole reason the error message gave before the close)."""
    from websockets.exceptions import ConnectionClosed

    detail = ""
    try:
        message = json.loads(socket.recv())
        if message.get("type") != "error":
            return message
        if "frame" in message:
            raise ApiError(422, message["detail"])
        detail = message["detail"]
        socket.recv()  # the close that follows
    except ConnectionClosed as closed:
        code, reason = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (1006, "connection lost")
        raise ApiError(code, detail or reason) from None
    raise ApiError(1011, detail)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.1), MAX_RETRY_WAIT)
    except ValueError:
        return 1.0


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase
    return detail if isinstance(detail, str) else json.dumps(detail)[:500]
