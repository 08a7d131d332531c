"""The second hostile corpus: what decoding may cost, how large a field may be, what a live session and
a connection not yet authenticated may hold, what a browser on another site may make the service do,
and the races and streams an attack found. Each case is refused or bounded, leaves nothing on disk, and
a normal request beside it stays fast.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import json
import socket
import sqlite3
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from orchestrator.api.live_protocol import (
    CLOSE_BAD_REQUEST,
    CLOSE_IDLE,
    CLOSE_TOO_BIG,
    CLOSE_TOO_FAST,
    CLOSE_TRY_LATER,
)
from orchestrator.casting import face_id
from orchestrator.decoding import MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, jpeg_scans, jpeg_segments
from orchestrator.jobs.sqlite import SQLiteJobStore
from orchestrator.jobs.store import JobState
from tests.helpers.cli import assert_one_line_error, run_swap
from tests.helpers.clips import moving_photo
from tests.helpers.hostile import (
    cover_first,
    jpeg_declaring,
    multi_picture,
    repeated_scans,
    with_comments,
)
from tests.helpers.live import camera_frame, closing, jpeg, live_session, live_url, opening, reply
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import PHOTO, Service, create_job, problem, upload, wait_job

LIMITS = {
    "max_sources": 3,
    "max_request_pixels": 6_000_000,
    "live_max_frame_pixels": 640 * 480,
    "live_opening_seconds": 2,
    "live_max_openings": 4,
}
SCANS = f"a JPEG of more than {MAX_JPEG_SCANS} scans, over the limit of {MAX_JPEG_SCANS}"
HOSTILE = repeated_scans(2000, 2000, 300)  # 35 KB: about a second of CPU to decode, each
FRAME = jpeg(camera_frame())


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("limits") / "data", LIMITS).start()
    yield service
    service.close()


@pytest.fixture(scope="module")
def keyed(triton, tmp_path_factory):
    env = {**LIMITS, "api_key": "s3cret", "max_connections": 12}
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("keyed") / "data", env).start()
    yield service
    service.close()


def left_nothing(service: Service, folders: set[str]) -> None:
    assert service.job_folders() == folders and service.scratch_files() == []


def timed_swap(service: Service) -> float:
    started = time.monotonic()
    response = service.http.post("/v1/swap", files=upload())
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- decoding cost -------------------------------------------------------------------------------------


def encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_the_scans_real_encoders_write_are_counted_and_allowed():
    photo = Image.open(TWO_FACES)
    thumbnail = encoded(photo.resize((80, 66)), progressive=True)
    exif = Image.Exif()
    exif[0x0201] = 0  # an EXIF block, its thumbnail a progressive JPEG of its own, inside APP1
    cases = {
        "baseline": (encoded(photo), 1),
        "progressive colour": (encoded(photo, progressive=True), 10),
        "progressive grayscale": (encoded(photo.convert("L"), progressive=True), 6),
        "optimised": (encoded(photo, progressive=True, optimize=True, quality=60), 10),
        "with an EXIF thumbnail": (encoded(photo, progressive=True, exif=exif.tobytes() + thumbnail), 10),
    }
    for case, (data, scans) in cases.items():
        assert jpeg_scans(data) == scans, case
    assert jpeg_scans(HOSTILE) == 310
    assert jpeg_scans(HOSTILE, stop_after=MAX_JPEG_SCANS) == MAX_JPEG_SCANS + 1
    assert jpeg_scans(HOSTILE[:5000]) < 310  # cut short: counted as far as it goes, never an error


def test_the_hostile_file_costs_what_the_issue_says_when_decoded():
    """The bound is worth having: unchecked, the 35 KB file takes far longer than a normal photo."""
    started = time.process_time()
    Image.open(io.BytesIO(HOSTILE)).load()
    hostile = time.process_time() - started
    started = time.process_time()
    Image.open(io.BytesIO(repeated_scans(2000, 2000, 0))).load()
    assert hostile > 10 * (time.process_time() - started)


PLACES = {  # case: (route, files, form)
    "swap source": ("/v1/swap", upload(source=("s.jpg", HOSTILE)), {}, "source-1"),
    "swap target": ("/v1/swap", upload(target=("t.jpg", HOSTILE)), {}, "target"),
    "swap reference": (
        "/v1/swap",
        upload(reference=("r.jpg", HOSTILE)),
        {"selector": "reference"},
        "reference",
    ),
    "job target": ("/v1/jobs", upload(target=("t.jpg", HOSTILE)), {}, "target"),
    "job source": ("/v1/jobs", upload(source=("s.jpg", HOSTILE)), {}, "source-1"),
    "faces target": ("/v1/faces", [("target", ("t.jpg", HOSTILE, "image/jpeg"))], {}, "target"),
}


@pytest.mark.parametrize("case", PLACES)
def test_jpegs_of_repeated_scans_are_refused_unread(service, case):
    route, files, form, name = PLACES[case]
    folders = service.job_folders()
    started = time.monotonic()
    problem(service.http.post(route, files=files, data=form), 422, f"{name}: {SCANS}")
    assert time.monotonic() - started < 5
    left_nothing(service, folders)


@pytest.mark.parametrize("route", ["/v1/swap", "/v1/jobs"])
def test_jpegs_of_countless_segments_are_refused_unread(service, route):
    folders = service.job_folders()
    target = with_comments(PHOTO, MAX_JPEG_SEGMENTS)
    problem(
        service.http.post(route, files=upload(target=("t.jpg", target))),
        422,
        f"target: a JPEG of more than {MAX_JPEG_SEGMENTS} segments, over the limit",
    )
    left_nothing(service, folders)
    assert jpeg_segments(with_comments(PHOTO, 10)) == (jpeg_segments(PHOTO)[0] + 10, 1)


def test_multi_picture_jpegs_are_read_as_jpegs_and_held_to_the_same_bound(service):
    """Pillow names a JPEG with a multi-picture index MPO: it is read (its first picture), not a 500,
    and its scans are counted like any JPEG's."""
    response = service.http.post("/v1/swap", files=upload(target=("t.jpg", multi_picture(PHOTO))))
    assert response.status_code == 200 and response.headers["x-faces-swapped"] == "2", response.text
    folders = service.job_folders()
    hostile = multi_picture(repeated_scans(600, 400, 0))
    at = hostile.index(b"\xff\xd9")  # the first picture's end: its last scan repeated before it
    ends = [i for i in range(at) if hostile[i : i + 2] == b"\xff\xda"]
    hostile = hostile[:at] + hostile[ends[-1] : at] * 60 + hostile[at:]
    problem(service.http.post("/v1/swap", files=upload(target=("t.jpg", hostile))), 422, f"target: {SCANS}")
    left_nothing(service, folders)


def test_a_normal_swap_stays_fast_beside_hostile_uploads(service):
    usual = min(timed_swap(service) for _ in range(2))
    folders = service.job_folders()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        attacks = [
            pool.submit(service.http.post, "/v1/swap", files=upload(target=("t.jpg", HOSTILE)))
            for _ in range(6)
        ]
        beside = pool.submit(timed_swap, service)
        for attack in attacks:
            problem(attack.result(), 422, SCANS)
        assert beside.result() < 3 * usual + 2, (beside.result(), usual)
    left_nothing(service, folders)


def test_the_cli_refuses_repeated_scans_in_one_line(triton, tmp_path):
    target = tmp_path / "hostile.jpg"
    target.write_bytes(HOSTILE)
    output = tmp_path / "out.jpg"
    started = time.monotonic()
    assert_one_line_error(run_swap(triton.grpc_url, target, output), f"hostile.jpg: {SCANS}")
    assert time.monotonic() - started < 60 and not output.exists()


# --- fields -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_face_id() -> str:
    return face_id(np.random.default_rng(1).standard_normal(512))


@pytest.mark.parametrize(
    "form, fragments",
    [
        ({"map": ["face-" + "A" * 1_000_000 + "=source.jpg"]}, ("map", "at most 1627 characters")),
        ({"map": ["face-" + "A" * 1366 + "=source.jpg"]}, ("not a face id",)),  # the right length, no id
        ({"map": [face_id(np.ones(256)) + "=source.jpg"]}, ("not a face id",)),  # an id of the wrong size
        ({"mask": "box," * 2000}, ("mask", "at most 512 characters")),
        ({"regions": "x" * 100_000}, ("regions", "at most 512 characters")),
        ({"reference_distance": "inf"}, ("reference_distance", "finite")),
        ({"mask_blur": "nan"}, ("mask_blur", "finite")),
    ],
)
@pytest.mark.parametrize("route", ["/v1/swap", "/v1/jobs"])
def test_oversized_and_malformed_fields_are_refused_before_storage(service, route, form, fragments):
    folders = service.job_folders()
    problem(service.http.post(route, files=upload(), data=form), 422, *fragments)
    left_nothing(service, folders)


@pytest.mark.parametrize("field, value", [("start", "inf"), ("end", "inf"), ("start", "nan")])
def test_a_video_window_must_be_finite(service, field, value):
    folders = service.job_folders()
    problem(service.http.post("/v1/jobs", files=upload(), data={field: value}), 422, field, "finite")
    left_nothing(service, folders)


def test_faces_form_fields_are_bounded(service):
    files = [("target", ("t.jpg", PHOTO, "image/jpeg"))]
    problem(service.http.post("/v1/faces", files=files, data={"detector_angles": "0," * 1000}), 422, "512")
    problem(service.http.post("/v1/faces", files=files, data={"score_threshold": "nan"}), 422, "finite")


def test_a_map_of_face_ids_of_the_right_size_is_accepted(service, a_face_id):
    job = create_job(service.http, data={"map": [f"{a_face_id}=source.jpg"], "preset": "ultrafast"})
    assert wait_job(service.http, job["id"])["state"] == "succeeded"


def checkpoint(store: SQLiteJobStore) -> None:
    """Fold the write-ahead log into the database file, so that its size shows what it holds."""
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def finished_jobs(store, count: int, request: dict) -> list[str]:
    ids = [f"{number:032d}" for number in range(count)]
    for job_id in ids:
        store.insert(job_id, "image", request)
        job = store.claim("worker")
        store.end(job.id, "worker", JobState.SUCCEEDED, result="result.jpg")
    return ids


def test_listings_and_statuses_do_not_read_requests(open_store):
    store = open_store()
    request = {"map": ["x" * 100_000] * 5}
    ids = finished_jobs(store, 3, request)
    jobs, total = store.list(limit=50, offset=0)
    assert total == 3 and [job.request for job in jobs] == [{}] * 3
    assert store.get(ids[0], request=False).request == {}
    assert store.get(ids[0]).request == request  # the workers' read


def test_deleted_jobs_give_their_space_back(tmp_path):
    store = SQLiteJobStore(tmp_path)
    try:
        ids = finished_jobs(store, 10, {"map": ["x" * 100_000] * 20})  # 2 MB a job, stored as given
        checkpoint(store)
        full = store.path.stat().st_size
        assert full > 15 * 2**20
        for job_id in ids:
            store.delete(job_id)
        checkpoint(store)
        assert store.path.stat().st_size < full / 10
    finally:
        store.close()


# --- live sessions -------------------------------------------------------------------------------------


def sends_error(connection, data, *fragments) -> None:
    connection.send(data)
    header, swapped = reply(connection)
    assert swapped is None and all(f in header["detail"] for f in fragments), header


def still_swaps(connection) -> None:
    connection.send(FRAME)
    header, swapped = reply(connection)
    assert swapped is not None and header["swapped"] == 2, header


def test_hostile_frames_are_answered_with_an_error_and_the_session_goes_on(service):
    big = jpeg(np.full((600, 800, 3), 90, np.uint8))  # 480,000 pixels, over the live limit of 307,200
    with live_session(service) as (connection, ready):
        assert ready["max_frame_pixels"] == 640 * 480
        started = time.monotonic()
        sends_error(connection, repeated_scans(600, 400, 300), SCANS)
        sends_error(connection, repeated_scans(480, 640, 60, quality=50), SCANS)
        sends_error(connection, HOSTILE, "2000x2000 is over the limit of 307,200 pixels")
        sends_error(connection, big, "800x600 is over the limit of 307,200 pixels")
        sends_error(connection, jpeg_declaring(65500, 65500), "the limit of 307,200 pixels")
        sends_error(connection, jpeg_declaring(65500, 16), "65500x16 is over the limit")
        assert time.monotonic() - started < 10
        still_swaps(connection)


def test_text_messages_after_the_opening_are_small_and_counted_against_the_rate(service):
    with live_session(service) as (connection, _):
        text = json.dumps({"type": "stop", "padding": "x" * 300})
        connection.send(text)
        code, reason, _ = closing(connection)
    assert (code, reason) == (
        CLOSE_TOO_BIG,
        f"a text message of {len(text)} characters is over the limit of 256",
    )
    with live_session(service) as (connection, _):
        with contextlib.suppress(ConnectionClosed):
            for _ in range(200):
                connection.send('{"type": "hello"}')
        code, reason, _ = closing(connection)
    assert (code, reason) == (CLOSE_TOO_FAST, "over the limit of 30 frames per second")


@pytest.mark.parametrize(
    "fields, fragment",
    [
        ({"sources": [b64(PHOTO)] * 4}, "4 source images, over the limit of 3"),
        ({"job": "0" * 100_000, "sources": []}, "job: String should have at most 32 characters"),
        ({"api_key": "k" * 100_000}, "api_key: String should have at most 1024 characters"),
        ({"sources": [b64(HOSTILE)]}, f"source-1: {SCANS}"),
        (
            {"sources": [b64(jpeg(np.full((2400, 2600, 3), 90, np.uint8)))]},
            "the request's images hold 6,240,000 pixels, over the limit of 6,000,000",
        ),
        (
            {"options": {"selector": "reference"}, "reference": b64(jpeg_declaring(65500, 65500))},
            "reference: 4,290,250,000 pixels, over the limit",
        ),
    ],
)
def test_live_openings_keep_the_request_limits(service, fields, fragment):
    with connect(live_url(service), open_timeout=30) as connection:
        connection.send(json.dumps(opening(**fields)))
        code, reason, details = closing(connection)
    assert code == CLOSE_BAD_REQUEST and fragment in details[-1], (code, reason, details)
    assert service.scratch_files() == []


def test_connections_that_never_authenticate_hold_little_and_not_for_long(keyed):
    key = {"X-API-Key": "s3cret"}
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(live_url(keyed), open_timeout=30)) for _ in range(4)]
        started = time.monotonic()
        with connect(live_url(keyed), open_timeout=30) as refused:
            code, reason, _ = closing(refused)
        assert (code, reason) == (CLOSE_TRY_LATER, "4 connections are waiting to open a session; try later")
        assert time.monotonic() - started < 2
        for _ in range(20):  # a flood beyond the budget is closed at once, so it never fills the cap
            with connect(live_url(keyed), open_timeout=30) as extra:
                assert closing(extra)[0] == CLOSE_TRY_LATER
        assert httpx.get(f"{keyed.url}/healthz", timeout=5).status_code == 200
        assert keyed.http.get("/v1/live", headers=key).status_code == 200
        with connect(live_url(keyed), additional_headers={"X-API-Key": "wrong"}, open_timeout=30) as wrong:
            assert closing(wrong)[0] == 4401  # at once, without waiting for an opening
        for connection in idle:
            code, reason, _ = closing(connection)
            assert (code, reason) == (CLOSE_IDLE, "no opening message for 2 s")
        assert time.monotonic() - started < 6
    with live_session(keyed, headers=key) as (connection, _):
        still_swaps(connection)


def test_health_answers_beyond_the_connection_cap(keyed):
    held = []
    try:
        for _ in range(12):
            sock = socket.create_connection(("127.0.0.1", keyed.port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # headers never finished
            held.append(sock)
        time.sleep(0.3)
        assert httpx.get(f"{keyed.url}/v1/live", headers={"X-API-Key": "s3cret"}).status_code == 503
        assert httpx.get(f"{keyed.url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{keyed.url}/readyz", timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()


# --- browsers on other sites ------------------------------------------------------------------------


def upgrade_status(service: Service, host: str) -> int:
    """The status of a WebSocket upgrade to /v1/live naming `host` (101: the socket opened)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            f"GET /v1/live HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        return int(sock.recv(1024).split(b" ", 2)[1])


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "[::2]"])
def test_requests_naming_another_host_are_refused(service, host):
    folders = service.job_folders()
    for method, path in [("GET", "/"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs")]:
        files = upload() if method == "POST" else None
        response = service.http.request(method, path, headers={"Host": host}, files=files)
        problem(response, 403, "is not one this service answers to (FACESWAP_ALLOWED_HOSTS)")
    assert upgrade_status(service, host) == 403
    left_nothing(service, folders)
    assert service.http.get("/healthz", headers={"Host": host}).status_code == 200
    for allowed in (f"localhost:{service.port}", f"127.0.0.1:{service.port}", f"[::1]:{service.port}"):
        assert service.http.get("/v1/jobs", headers={"Host": allowed}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    ],
)
def test_cross_site_browser_requests_cannot_change_anything_without_a_key(service, headers):
    job = create_job(service.http, data={"preset": "ultrafast"})
    folders = service.job_folders()
    response = service.http.post("/v1/jobs", files=upload(), headers=headers)
    problem(response, 403, "refused")
    problem(service.http.delete(f"/v1/jobs/{job['id']}", headers=headers), 403, "refused")
    left_nothing(service, folders)
    assert service.http.get("/v1/jobs", headers=headers).status_code == 200  # reading is no change
    same_site = {"Origin": service.url, "Sec-Fetch-Site": "same-origin"}
    assert service.http.post("/v1/jobs", files=upload(), headers=same_site).status_code == 202


def test_the_pages_forbid_framing_and_foreign_content(service):
    for path in ("/", "/live", "/static/app.js"):
        headers = service.http.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_api_keys_in_query_strings_are_not_logged(keyed):
    keyed.http.get("/v1/jobs?api_key=s3cret")
    with live_session(keyed, query="api_key=s3cret") as (connection, _):
        still_swaps(connection)
    log = keyed.log.read_text()
    assert "api_key=[redacted]" in log and "s3cret" not in log


# --- races and streams ------------------------------------------------------------------------------


def test_a_result_downloading_while_it_is_deleted_arrives_whole(service, tmp_path):
    large = cv2.imencode(".png", cv2.resize(cv2.imread(str(TWO_FACES)), (2400, 1968)))[1].tobytes()
    job = create_job(service.http, files=upload(target=("t.png", large)), data={"output_format": "png"})
    job = wait_job(service.http, job["id"])
    whole = service.http.get(job["result_url"]).content
    assert len(whole) > 2 * 2**20  # more than the socket buffers hold
    with (
        httpx.Client(base_url=service.url, timeout=60) as reader,
        reader.stream("GET", job["result_url"]) as download,
    ):
        assert download.status_code == 200
        chunks = download.iter_bytes(65536)
        first = next(chunks)
        assert service.http.delete(f"/v1/jobs/{job['id']}").status_code == 204
        time.sleep(0.5)
        received = first + b"".join(chunks)
    assert received == whole and int(download.headers["content-length"]) == len(whole)
    problem(service.http.get(job["result_url"]), 404, "no job")
    assert job["id"] not in service.job_folders()


def test_downloads_and_deletes_at_once_give_whole_files_or_404(service):
    for _ in range(3):
        job = create_job(service.http, data={"preset": "ultrafast"})
        job = wait_job(service.http, job["id"])
        whole = service.http.get(job["result_url"]).content
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            downloads = [pool.submit(service.http.get, job["result_url"]) for _ in range(12)]
            pool.submit(service.http.delete, f"/v1/jobs/{job['id']}").result()
            for download in downloads:
                response = download.result()
                assert (response.status_code, response.content) == (200, whole) or response.status_code == 404


@pytest.fixture(scope="module")
def cover_art_video(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cover")
    return cover_first(
        moving_photo(folder / "clip.mp4", size="320x240", seconds=1.0, rate=5), folder / "c.mp4"
    )


def test_a_video_with_cover_art_first_is_read_by_the_stream_that_was_checked(service, cover_art_video):
    content = cover_art_video.read_bytes()
    found = service.http.post(
        "/v1/faces", files=[("target", ("c.mp4", content, "video/mp4"))], data={"frame": 2}
    )
    assert found.status_code == 200, found.text
    assert (found.json()["width"], found.json()["height"]) == (320, 240) and found.json()["faces"]
    job = create_job(service.http, files=upload(target=("c.mp4", content)), data={"preset": "ultrafast"})
    done = wait_job(service.http, job["id"])
    assert done["frames_total"] == 5 and done["swapped"] >= 5, done
    result = service.http.get(done["result_url"])
    assert result.status_code == 200 and result.content[4:8] == b"ftyp"
