"""`WebSocket /v1/live` over real sockets, without a browser: the service as a process, a real Triton.

Frames come back swapped in the face areas only (boxes from InsightFace's SCRFD) and equal to the
pipeline's own swap of the same frame; faces are detected every N frames and tracked in between.
Then the ways clients misbehave: malformed openings, oversized and non-image frames, too many frames,
a client that sends faster than it reads or never reads, one that vanishes, idle ones, too many
sessions, wrong keys and origins. Each ends with its close code and reason, and a healthy session
running beside them keeps getting its frames.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time

import cv2
import numpy as np
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from orchestrator.api.live_protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_FORBIDDEN,
    CLOSE_IDLE,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_TOO_FAST,
    CLOSE_TRY_LATER,
    CLOSE_UNAUTHORIZED,
)
from orchestrator.options import SwapOptions
from orchestrator.swapper import FaceSwapper
from tests.helpers.clips import moving_photo
from tests.helpers.live import (
    camera_frame,
    closing,
    decode,
    face_boxes,
    face_change,
    jpeg,
    live_session,
    live_url,
    opening,
    reply,
)
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import ENDED, Service, create_job, upload, wait_job

IDLE = 3.0
LIMITS = {"live_max_sessions": 3, "live_idle_seconds": IDLE, "live_max_message_mb": 0.5, "live_max_fps": 30}
FRAME = jpeg(camera_frame())


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("live") / "data", LIMITS).start()
    try:
        yield service
        assert service.http.get("/healthz").status_code == 200  # it stayed up
        wait_sessions(service, 0)
        service.assert_no_internal_error()
    finally:
        service.close()


def sessions_open(service: Service) -> int:
    return service.http.get("/v1/live").json()["sessions"]


def wait_sessions(service: Service, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while sessions_open(service) != count:
        assert time.monotonic() < deadline, f"{sessions_open(service)} sessions open, expected {count}"
        time.sleep(0.1)


def swaps_a_frame(service: Service, headers=None, query: str = "", **fields) -> None:
    """A new session opens and gets one frame swapped."""
    with live_session(service, headers=headers, query=query, **fields) as (connection, _):
        connection.send(FRAME)
        assert reply(connection)[0]["swapped"] == 2


def refused(service: Service, first, headers=None, query: str = "") -> tuple[int, str, list[str]]:
    """Connect, send `first` (an opening dict, text or bytes), and return how the server closed."""
    with connect(live_url(service, query), additional_headers=headers, open_timeout=30) as connection:
        with contextlib.suppress(ConnectionClosed):  # a refusal before the opening may come first
            connection.send(json.dumps(first) if isinstance(first, dict) else first)
        return closing(connection)


HEALTHY_FPS = 20  # a well-behaved client stays under the service's 30 frames per second


@contextlib.contextmanager
def healthy_session(service: Service):
    """A well-behaved session running in the background; on exit, it must have had every frame answered."""
    with live_session(service) as (connection, _):
        yield from _run_healthy(connection)


def _run_healthy(connection):
    stop = threading.Event()
    answered: list[dict] = []
    problems: list[str] = []

    def run():
        try:
            while not stop.is_set():
                sent = time.monotonic()
                connection.send(FRAME)
                header, data = reply(connection)
                time.sleep(max(0.0, sent + 1 / HEALTHY_FPS - time.monotonic()))  # within the rate limit
                if data is None:
                    problems.append(header["detail"])
                answered.append(header)
        except Exception as error:  # reported by the assertion below
            problems.append(repr(error))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        deadline = time.monotonic() + 30  # a short test body still sees the session answered a few times
        while len(answered) < 3 and not problems and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(60)
    assert not problems, problems
    assert len(answered) >= 3 and all(h["swapped"] == 2 and h["dropped"] == 0 for h in answered), answered


def test_live_info_tells_the_limits_and_the_default_options(service):
    info = service.http.get("/v1/live").json()
    assert info == {
        "sessions": 0,
        "max_sessions": 3,
        "max_fps": 30.0,
        "max_message_bytes": 512 * 1024,
        "max_frame_pixels": 3840 * 2160,
        "idle_seconds": IDLE,
        "detect_every": 3,
        "options": SwapOptions().model_dump(mode="json"),
    }
    document = service.http.get("/openapi.json").json()
    assert "/v1/live" in document["paths"] and "SwapOptions" in document["components"]["schemas"]


def test_frames_come_back_swapped_in_the_face_areas_only_detected_every_n_and_tracked(service, triton_client):
    sent = decode(FRAME)
    boxes = face_boxes(sent)
    assert len(boxes) == 2
    swapper = FaceSwapper(triton_client)
    expected = swapper.swap_frames([sent], swapper.find_faces([sent]), swapper.identity([TWO_FACES]))[0]
    detected = []
    with live_session(service, detect_every=3) as (connection, ready):
        assert ready["detect_every"] == 3 and ready["options"] == SwapOptions().model_dump(mode="json")
        deadline = time.monotonic() + 60
        number = -1
        while number < 6 or not any(detected[1:]):  # until a detection beside the frames has landed
            assert time.monotonic() < deadline, detected
            number += 1
            connection.send(FRAME)
            header, data = reply(connection)
            assert header["frame"] == number and header["dropped"] == 0
            assert header["faces"] == header["swapped"] == 2
            stages = {"queued", "decode", "detect" if number == 0 else "track", "swap", "encode", "total"}
            assert set(header["ms"]) == stages  # only the first frame waits for the detector
            assert header["ms"]["total"] >= header["ms"]["swap"] > 0
            detected.append(header["detected"])
            result = decode(data)
            assert result.shape == sent.shape
            inside, outside = face_change(sent, result, boxes)
            assert inside > 8 and outside < 1.5, (inside, outside)
            assert np.abs(result.astype(float) - expected).mean() < 1.5  # the pipeline's swap, re-encoded
            time.sleep(0.05)
    assert detected[0] and any(detected[1:]) and not all(detected), (
        detected
    )  # detected again, tracked between


def test_faces_carried_between_detections_stay_where_they_were_detected(service, triton_client):
    """Detection on frame 0 only: in a later frame the faces are swapped where frame 0 had them."""
    first = decode(FRAME)
    moved = decode(jpeg(camera_frame(shift=60)))
    swapper = FaceSwapper(triton_client)
    carried = swapper.swap_frames([moved], swapper.find_faces([first]), swapper.identity([TWO_FACES]))[0]
    with live_session(service, detect_every=100) as (connection, _):
        connection.send(FRAME)
        reply(connection)
        connection.send(jpeg(camera_frame(shift=60)))
        header, data = reply(connection)
    assert header["detected"] is False and header["swapped"] == 2
    assert np.abs(decode(data).astype(float) - carried).mean() < 1.5


def test_the_reference_selector_swaps_only_the_face_like_the_reference(service):
    photo = cv2.imread(str(TWO_FACES))
    right_person = base64.b64encode(jpeg(photo[20:200, 230:380])).decode()  # the right-hand face, cropped
    options = {"selector": "reference", "reference_distance": 0.3}
    with live_session(service, reference=right_person, options=options, detect_every=2) as (connection, _):
        for _ in range(4):
            connection.send(FRAME)
            header, data = reply(connection)
            assert (header["faces"], header["swapped"]) == (2, 1), header
    changed = np.abs(decode(data).astype(float) - decode(FRAME)).mean(axis=2) > 10
    assert changed[:, 320:].sum() > 20 * changed[:, :320].sum()  # the right half changed, the left did not


@pytest.mark.parametrize(
    ("first", "fragment"),
    [
        ("not json", "Invalid JSON"),
        (b"\xff\xd8\xff binary first", "the first message must be the JSON opening"),
        ({"type": "start"}, "give the source photos in `sources` or a job id in `job`"),
        ({**opening(), "type": "begin"}, "type: Input should be 'start'"),
        (opening(sources=["***"]), "sources.0: not valid base64"),
        (
            opening(options={"selector": "all"}),
            "options.selector: Input should be 'many', 'one' or 'reference'",
        ),
        (opening(options={"face_index": -1}), "options.face_index"),
        (opening(colour="red"), "colour: Extra inputs are not permitted"),
        (opening(options={"selector": "reference"}), "the reference selector needs a `reference` photo"),
        (opening(detect_every=0), "detect_every: Input should be greater than or equal to 1"),
        (opening(sources=[base64.b64encode(jpeg(np.full((240, 320, 3), 90, np.uint8))).decode()]), "no face"),
        (opening(sources=[base64.b64encode(b"hello, not a photo").decode()]), "source-1: not an image"),
        (opening(job="0" * 32, sources=[]), "no job '00000000000000000000000000000000'"),
    ],
)
def test_a_malformed_opening_closes_with_4400_and_its_reason(service, first, fragment):
    code, reason, details = refused(service, first)
    assert code == CLOSE_BAD_REQUEST, (code, reason)
    assert fragment in details[-1] and reason and reason in details[-1], (reason, details)
    assert "Traceback" not in details[-1]


def test_oversized_messages_close_with_1009(service):
    limit = 512 * 1024
    big = json.dumps(opening(sources=["A" * limit]))
    code, reason, _ = refused(service, big)
    assert (code, reason) == (
        CLOSE_TOO_BIG,
        f"a message of {len(big):,} bytes is over the limit of {limit:,}",
    )
    with live_session(service) as (connection, _):
        connection.send(b"\xff\xd8\xff" + bytes(limit))
        code, reason, _ = closing(connection)
    assert code == CLOSE_TOO_BIG and f"over the limit of {limit:,}" in reason


def test_non_image_frames_are_answered_with_an_error_and_the_session_goes_on(service):
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    with healthy_session(service), live_session(service) as (connection, _):
        for number, (data, detail) in enumerate(
            [
                (b"hello", "not a JPEG or WebP image"),
                (png, "not a JPEG or WebP image"),
                (FRAME[:200], "cannot"),  # a JPEG cut short
            ]
        ):
            connection.send(data)
            header, swapped = reply(connection)
            assert swapped is None and header["frame"] == number and detail in header["detail"], header
        connection.send(json.dumps({"type": "frames please"}))
        assert "the only text message after the opening" in json.loads(connection.recv(timeout=30))["detail"]
        connection.send(FRAME)
        header, data = reply(connection)
        assert header["frame"] == 3 and header["swapped"] == 2 and decode(data).shape == (480, 640, 3)


def test_a_client_sending_faster_than_it_reads_gets_the_newest_frame_and_a_drop_count(service):
    sent = 25  # within the one-second burst of the frame rate limit
    with healthy_session(service), live_session(service) as (connection, _):
        for _ in range(sent):
            connection.send(FRAME)
        answered = []
        while not answered or answered[-1]["frame"] != sent - 1:
            header, data = reply(connection)
            assert data is not None, header
            answered.append(header)
    numbers = [header["frame"] for header in answered]
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert answered[-1]["dropped"] == sent - len(answered) > 0  # every frame answered or counted dropped
    assert len(answered) < sent / 2  # at most one waited behind the one in work


@pytest.mark.slow
def test_a_client_that_never_reads_is_closed_and_the_server_stays_bounded(service):
    process = psutil.Process(service.pid)
    before = process.memory_info().rss
    wait_sessions(service, 0)  # the earlier tests' sessions have ended
    with healthy_session(service):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills quickly
        raw.connect(("127.0.0.1", service.port))
        with connect(
            live_url(service), sock=raw, max_queue=1, open_timeout=30, close_timeout=1
        ) as connection:
            large = opening(options={"jpeg_quality": 100})  # large answers fill the buffers sooner
            connection.send(json.dumps(large))
            wait_sessions(service, 2)
            deadline = time.monotonic() + 60
            with contextlib.suppress(ConnectionClosed, OSError):
                while time.monotonic() < deadline and sessions_open(service) == 2:
                    for _ in range(10):
                        connection.send(FRAME)  # never reading any answer
                        time.sleep(1 / 25)
            assert time.monotonic() < deadline, "the session of a client that reads nothing stayed open"
            wait_sessions(service, 1)
    assert process.memory_info().rss - before < 300 * 2**20


def test_a_client_that_vanishes_frees_its_session(service):
    vanishing = live_session(service)
    with (
        healthy_session(service),
        contextlib.suppress(ConnectionClosed, OSError),
        vanishing as (connection, _),
    ):
        for _ in range(3):
            connection.send(FRAME)
        time.sleep(0.2)
        connection.socket.shutdown(socket.SHUT_RDWR)  # gone without a closing handshake
        connection.socket.close()
        wait_sessions(service, 1)
    wait_sessions(service, 0)
    swaps_a_frame(service)


def test_frames_over_the_rate_limit_close_with_4429(service):
    with live_session(service) as (connection, _):
        with contextlib.suppress(ConnectionClosed):
            for _ in range(60):  # twice the one-second burst, at once
                connection.send(FRAME)
        code, reason, _ = closing(connection)
    assert (code, reason) == (CLOSE_TOO_FAST, "over the limit of 30 frames per second")


def test_idle_sessions_close_with_4408(service):
    with connect(live_url(service), open_timeout=30) as connection:
        started = time.monotonic()
        code, reason, _ = closing(connection)
    assert (code, reason) == (CLOSE_IDLE, "no opening message for 3 s")
    assert IDLE - 0.5 <= time.monotonic() - started < IDLE + 5  # its clock started at the handshake
    with live_session(service) as (connection, _):
        connection.send(FRAME)
        reply(connection)
        assert closing(connection)[:2] == (CLOSE_IDLE, "no frame for 3 s")


def test_sessions_over_the_limit_close_with_1013_and_a_freed_place_is_reused(service):
    wait_sessions(service, 0)
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(live_session(service))[0] for _ in range(3)]
        code, reason, _ = refused(service, opening())
        assert (code, reason) == (CLOSE_TRY_LATER, "all 3 live sessions of this server are in use; try later")
        held[0].close()
        wait_sessions(service, 2)
        swaps_a_frame(service)


def test_stop_closes_the_session_normally(service):
    with live_session(service) as (connection, _):
        connection.send(json.dumps({"type": "stop"}))
        assert closing(connection) == (CLOSE_NORMAL, "stopped by the client", [])


@pytest.fixture(scope="module")
def secured(triton, tmp_path_factory):
    env = {"api_key": "s3cret", "cors_origins": "https://app.example"}
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("live-secured") / "data", env).start()
    yield service
    service.close()


def test_the_api_key_is_taken_from_the_header_the_query_or_the_opening(secured):
    assert secured.http.get("/v1/live").status_code == 401
    assert secured.http.get("/v1/live", headers={"X-API-Key": "s3cret"}).status_code == 200
    for headers, query, fields in [
        (None, "", {}),
        ({"X-API-Key": "wrong"}, "api_key=wrong", {"api_key": "x"}),
    ]:
        code, reason, _ = refused(secured, opening(**fields), headers=headers, query=query)
        assert (code, reason) == (
            CLOSE_UNAUTHORIZED,
            "a valid API key is required (X-API-Key, ?api_key= or `api_key`)",
        )
    for headers, query, fields in [
        ({"X-API-Key": "s3cret"}, "", {}),
        (None, "api_key=s3cret", {}),
        (None, "", {"api_key": "s3cret"}),
    ]:
        swaps_a_frame(secured, headers=headers, query=query, **fields)


def test_browsers_from_other_origins_are_refused_with_4403(secured):
    key = {"api_key": "s3cret"}
    code, reason, _ = refused(secured, opening(**key), headers={"Origin": "https://evil.example"})
    assert (code, reason) == (CLOSE_FORBIDDEN, "the origin https://evil.example is not allowed")
    for origin in ("https://app.example", secured.url):  # the CORS setting's, and the service's own page
        with live_session(secured, headers={"Origin": origin}, **key) as (_, ready):
            assert ready["type"] == "ready"


@pytest.mark.slow
def test_a_session_can_take_the_source_photos_of_a_waiting_job(triton, tmp_path, service_clip):
    one_worker = Service(triton.grpc_url, tmp_path / "data", {"workers": 1}).start()
    try:
        blocker = create_job(
            one_worker.http, upload(target=("long.mp4", service_clip)), {"preset": "ultrafast"}
        )
        wait_job(one_worker.http, blocker["id"], ("running",), 60)
        waiting = create_job(one_worker.http, upload())
        swaps_a_frame(one_worker, job=waiting["id"], sources=[])
        for job in (blocker, waiting):
            one_worker.http.delete(f"/v1/jobs/{job['id']}")
        wait_job(one_worker.http, blocker["id"], ENDED, 60)
        code, reason, _ = refused(one_worker, opening(job=blocker["id"], sources=[]))
        assert code == CLOSE_BAD_REQUEST and "has no source photos any more" in reason
    finally:
        one_worker.close()


@pytest.fixture(scope="module")
def service_clip(tmp_path_factory) -> bytes:
    return moving_photo(
        tmp_path_factory.mktemp("live-clip") / "long.mp4", size="320x240", seconds=10, rate=6
    ).read_bytes()
