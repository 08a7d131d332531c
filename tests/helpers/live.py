"""Live sessions for tests: camera-like frames of the shared photo, a WebSocket client, face areas.

The face areas come from InsightFace's own SCRFD on the shared detector file, so a test checks the
service's swapped frames against boxes it did not compute itself.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from functools import cache

import cv2
import numpy as np
from insightface.model_zoo.scrfd import SCRFD
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers.paths import SCRFD as SCRFD_FILE
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import Service

CAMERA = (640, 480)


def camera_frame(shift: int = 0) -> np.ndarray:
    """The two-faces photo 400 pixels high in a 640x480 grey frame, moved `shift` (up to 76) pixels right."""
    width, height = CAMERA
    photo = cv2.imread(str(TWO_FACES))
    photo = cv2.resize(photo, (round(photo.shape[1] * 400 / photo.shape[0]), 400))
    frame = np.full((height, width, 3), 128, np.uint8)
    x, y = (width - photo.shape[1]) // 2 + shift, (height - photo.shape[0]) // 2
    frame[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
    return frame


def jpeg(frame: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert frame is not None, data[:32]
    return frame


@cache
def _detector() -> SCRFD:
    detector = SCRFD(str(SCRFD_FILE))
    detector.prepare(-1, input_size=(640, 640), det_thresh=0.5)
    return detector


def face_boxes(frame: np.ndarray) -> np.ndarray:
    """[N, 4] face boxes by InsightFace's SCRFD."""
    boxes, _ = _detector().detect(frame, input_size=(640, 640))
    return boxes[:, :4]


def face_change(before: np.ndarray, after: np.ndarray, boxes: np.ndarray) -> tuple[float, float]:
    """Mean absolute difference inside the face boxes, and outside the boxes grown to twice their size."""
    difference = np.abs(after.astype(float) - before.astype(float)).mean(axis=2)
    inside = np.zeros(difference.shape, bool)
    near = np.zeros(difference.shape, bool)
    for x1, y1, x2, y2 in boxes:
        inside[int(y1) : int(y2), int(x1) : int(x2)] = True
        w, h = x2 - x1, y2 - y1
        near[max(int(y1 - h / 2), 0) : int(y2 + h / 2), max(int(x1 - w / 2), 0) : int(x2 + w / 2)] = True
    return float(difference[inside].mean()), float(difference[~near].mean())


def opening(**fields) -> dict:
    """An opening message with the shared photo as the source, `fields` added or replaced."""
    return {"type": "start", "sources": [base64.b64encode(TWO_FACES.read_bytes()).decode()], **fields}


def live_url(service: Service, query: str = "") -> str:
    return service.url.replace("http://", "ws://") + "/v1/live" + (f"?{query}" if query else "")


@contextlib.contextmanager
def live_session(
    service: Service, headers=None, query: str = "", **fields
) -> Iterator[tuple[ClientConnection, dict]]:
    """A connected live session past its opening: the connection and the `ready` message."""
    with connect(live_url(service, query), additional_headers=headers, open_timeout=30) as connection:
        connection.send(json.dumps(opening(**fields)))
        ready = json.loads(connection.recv(timeout=60))
        assert ready["type"] == "ready", ready
        yield connection, ready


def reply(connection: ClientConnection, timeout: float = 60) -> tuple[dict, bytes | None]:
    """The next answer to a frame: (header, swapped frame) or (error message, None)."""
    header = json.loads(connection.recv(timeout=timeout))
    if header["type"] == "error":
        return header, None
    assert header["type"] == "frame", header
    data = connection.recv(timeout=timeout)
    assert isinstance(data, bytes)
    return header, data


def closing(connection, timeout: float = 30) -> tuple[int, str, list[str]]:
    """Read until the server closes: its close code and reason, and the error details it sent."""
    details = []
    try:
        while True:
            message = connection.recv(timeout=timeout)
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                details.append(json.loads(message)["detail"])
    except ConnectionClosed as closed:
        return (closed.rcvd.code, closed.rcvd.reason, details) if closed.rcvd else (1006, "", details)
