"""The hostile-input corpus: what an attacker uploads to the service or hands the CLI, each with its refusal.

Every API case checks the response, the peak memory of the service and its children (sampled while the
request runs, and bounded), that nothing is left on disk, and that a normal job submitted afterwards
still succeeds. The `strict` service has small limits, so that inputs just over them are cheap to make;
the `default` one shows the defaults refuse the issue's own examples. Peaks are printed at the end of
the module (run with -s to see them).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from orchestrator import media
from orchestrator.errors import MediaError
from orchestrator.media import FrameReader, probe
from tests.helpers.cli import assert_one_line_error, run_swap, swap_command
from tests.helpers.clips import ffmpeg, moving_photo
from tests.helpers.hostile import (
    image_in,
    lying_duration,
    png_declaring,
    recursive_concat,
    referencing,
    self_referencing,
    timestamp_jump,
)
from tests.helpers.memory import PeakMemory
from tests.helpers.paths import ROOT, TWO_FACES
from tests.helpers.service import PHOTO, Service, create_job, problem, upload, wait_job

MB = 2**20
STRICT = {
    "max_sources": 3,
    "max_request_pixels": 60_000_000,
    "max_video_seconds": 60,
    "max_video_frames": 200,
    "max_video_pixels": 1_000_000,
    "max_frame_gap_seconds": 5,
}
# The service itself holds Python, NumPy, OpenCV and gRPC (about 300 MB). A refusal from the header
# may add little to that; decoding the largest image allowed, a few bytes a pixel.
REFUSED_UNREAD = 512 * MB
LARGEST_IMAGE_DECODED = 1024 * MB
PEAKS: dict[str, str] = {}


def start(triton, folder: Path, settings: dict) -> Service:
    return Service(triton.grpc_url, folder / "data", settings).start()


@pytest.fixture(scope="module")
def strict(triton, tmp_path_factory):
    service = start(triton, tmp_path_factory.mktemp("strict"), STRICT)
    yield service
    service.close()


@pytest.fixture(scope="module")
def default(triton, tmp_path_factory):
    service = start(triton, tmp_path_factory.mktemp("default"), {})
    yield service
    service.close()


@pytest.fixture(scope="module", autouse=True)
def peaks_report():
    yield
    print("\npeak memory per attack (service and children):")
    for case, peak in PEAKS.items():
        print(f"  {case}: {peak}")


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    """A local video the attacks try to make the service read and return."""
    return moving_photo(tmp_path_factory.mktemp("secret") / "secret.mp4", size="320x240", seconds=1.0, rate=5)


def attack(service: Service, case: str, send: Callable[[], httpx.Response], bound: int = REFUSED_UNREAD):
    """Send a hostile request: its response, after checking the peak memory, that nothing was left on
    disk and that a normal job still succeeds."""
    folders = service.job_folders()
    with PeakMemory(service.pid) as peak:
        response = send()
    PEAKS[case] = str(peak)
    assert peak.total < bound, (case, str(peak))
    assert service.job_folders() == folders and service.scratch_files() == []
    job = create_job(service.http)
    wait_job(service.http, job["id"], timeout=120)
    return response


def refused_cli(
    triton, target: Path, output: Path, *fragments: str, env: dict | None = None, source=TWO_FACES
):
    """The CLI on a hostile target: exit 1, one error line with the fragments, nothing written."""
    before = set(output.parent.iterdir())
    environment = {**os.environ, **{f"FACESWAP_{k.upper()}": str(v) for k, v in (env or {}).items()}}
    result = run_swap(
        triton.grpc_url, target, output, "--preset", "ultrafast", env=environment, source=source
    )
    assert_one_line_error(result, *fragments)
    assert set(output.parent.iterdir()) == before


# --- inputs that name other files or URLs ------------------------------------------------------------


REFERENCING = referencing("SECRET")


ACCEPTED = "; it reads JPEG, PNG or WebP images and MP4, MOV, MKV, WEBM videos"


def demuxer_refusal(demuxer: str | None) -> str:
    """The refusal of a file that ffprobe reads with `demuxer`, a demuxer not allowed, with what is read."""
    refused = "not an image or a video this service reads"
    if demuxer is None:
        return refused
    if demuxer == "image2":
        return f"{refused} (its content is none of these images, whatever its name says){ACCEPTED}"
    reason = f"{demuxer} is not a video container this service reads (mp4, mov, mkv, webm)"
    return f"{refused} ({reason}){ACCEPTED}"


@pytest.mark.parametrize("case", REFERENCING)
def test_inputs_naming_other_files_are_refused_by_the_service(strict, secret, case):
    content = referencing(str(secret))[case][0]
    response = attack(
        strict, case, lambda: strict.http.post("/v1/jobs", files=upload(target=("clip.mp4", content)))
    )
    problem(response, 415, "target 'clip.mp4': " + demuxer_refusal(REFERENCING[case][1]))


def test_a_playlist_of_another_jobs_result_is_refused(strict, service_clip):
    """The issue's leak: job ids are listed, results lie at ../<id>/result.mp4 beside each upload."""
    job = create_job(
        strict.http, upload(target=("clip.mp4", service_clip.read_bytes())), {"preset": "ultrafast"}
    )
    wait_job(strict.http, job["id"], timeout=180)
    listed = strict.http.get("/v1/jobs").json()["jobs"][0]["id"]
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n../{listed}/result.mp4\n#EXT-X-ENDLIST\n"
    response = attack(
        strict,
        "hls of a result",
        lambda: strict.http.post("/v1/jobs", files=upload(target=("p.mp4", playlist.encode()))),
    )
    problem(response, 415, "target 'p.mp4': " + demuxer_refusal("hls"))


@pytest.mark.parametrize(
    ("case", "content", "demuxer"),
    [
        ("self-referencing playlist", self_referencing("target"), "hls"),
        ("50 self-referencing variants", self_referencing("target", 50), "hls"),
        ("recursive concat script", recursive_concat("target"), "concat"),
    ],
)
def test_self_referencing_inputs_are_refused_at_once(strict, case, content, demuxer):
    """The issue's 52 bytes grew ffprobe to 4.5 GB in 8 s; they are now refused before anything is read."""
    began = time.monotonic()
    response = attack(
        strict, case, lambda: strict.http.post("/v1/jobs", files=upload(target=("t.m3u8", content)))
    )
    problem(response, 415, "target 't.m3u8': " + demuxer_refusal(demuxer))
    assert time.monotonic() - began < 60  # the normal job included


@pytest.mark.parametrize("case", REFERENCING)
def test_inputs_naming_other_files_are_refused_by_the_cli(triton, secret, tmp_path, case):
    content, demuxer = referencing(str(secret))[case]
    target = tmp_path / "clip.mp4"
    target.write_bytes(content)
    refused_cli(triton, target, tmp_path / "out.mp4", "clip.mp4: " + demuxer_refusal(demuxer))


def test_a_text_file_named_like_a_photo_is_refused_as_no_image_it_reads(triton, tmp_path):
    target = tmp_path / "notes.jpg"
    target.write_text("a shopping list, not a photo\n")
    refused_cli(triton, target, tmp_path / "out.mp4", "notes.jpg: " + demuxer_refusal("image2"))


def test_an_image_sequence_pattern_is_refused_by_the_cli(triton, tmp_path):
    """A target named like an image2 pattern: ffmpeg would read frame001.bmp, frame002.bmp, ..."""
    for number in (1, 2, 3):
        ffmpeg(
            "-f", "lavfi", "-i", "color=red:size=64x48", "-frames:v", "1", tmp_path / f"frame{number:03d}.bmp"
        )
    target = tmp_path / "frame%03d.bmp"
    target.write_bytes(b"not a picture, but a name that is a pattern")
    refused_cli(triton, target, tmp_path / "out.mp4", "frame%03d.bmp: " + demuxer_refusal("image2"))


def test_self_referencing_playlist_is_refused_by_the_cli(triton, tmp_path):
    target = tmp_path / "loop.m3u8"
    target.write_bytes(self_referencing(str(target), 50))
    refused_cli(triton, target, tmp_path / "out.mp4", "loop.m3u8: " + demuxer_refusal("hls"))


@pytest.mark.parametrize("name", ["concat:a.mp4|b.mp4", "subfile,,start,0,end,0,,:a.mp4", "data:,x.mp4"])
def test_names_that_look_like_protocols_are_files_to_the_cli(triton, tmp_path, name):
    """A file named like an ffmpeg protocol is that file, and the output name is one file too."""
    clip = moving_photo(tmp_path / "clip.mp4", size="160x120", seconds=0.4, rate=5)
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    clip.rename(target)
    output = tmp_path / "tee:x.mp4|y.mp4"
    result = run_swap(triton.grpc_url, target, output, "--preset", "ultrafast")
    assert result.returncode == 0, result.stderr
    assert probe(output).frame_count == probe(target).frame_count == 2
    assert not (tmp_path / "a.mp4").exists() and not (tmp_path / "x.mp4").exists()


# --- videos over the limits ---------------------------------------------------------------------------


def short_clip(path: Path, size: str, seconds: float, rate: float) -> Path:
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}", "-c:v", "libx264", path
    )
    return path


VIDEOS = {
    # name: (maker, the strict service's refusal)
    "frames": (lambda p: short_clip(p, "64x48", 9, 25), "225 frames, over the limit of 200"),
    "length": (lambda p: short_clip(p, "64x48", 70, 1), "70.0 s long, over the limit of 60 s"),
    "frame size": (
        lambda p: short_clip(p, "1600x900", 0.2, 5),
        "1600x900 frames are 1,440,000 pixels, over the limit of 1,000,000",
    ),
    "timestamp jump": (
        lambda p: timestamp_jump(p, to=20),
        "its timestamps jump 20.1 s at 0.3 s, over the limit of 5 s",
    ),
    "late start": (
        lambda p: timestamp_jump(p.with_suffix(".mkv"), to=10, lead=True, audio=True),
        "its timestamps jump 10.0 s at 0.0 s, over the limit of 5 s",
    ),
    "lying header": (lambda p: lying_duration(p.with_suffix(".mkv"), 100), "s long, over the limit of 60 s"),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("over_limits")
    return {name: make(folder / f"{name.replace(' ', '_')}.mp4") for name, (make, _) in VIDEOS.items()}


@pytest.fixture(scope="module")
def service_clip(tmp_path_factory) -> Path:
    return moving_photo(tmp_path_factory.mktemp("normal") / "normal.mp4", size="320x240", seconds=0.6, rate=5)


@pytest.mark.parametrize("name", VIDEOS)
def test_videos_over_the_limits_are_422_naming_the_limit(strict, videos, name):
    video = videos[name]
    response = attack(
        strict,
        f"video: {name}",
        lambda: strict.http.post("/v1/jobs", files=upload(target=(video.name, video.read_bytes()))),
    )
    assert problem(response, 422, VIDEOS[name][1]).startswith("target: ")


@pytest.mark.parametrize("name", VIDEOS)
def test_videos_over_the_limits_are_refused_by_the_cli(triton, videos, tmp_path, name):
    refused_cli(
        triton, videos[name], tmp_path / "out.mp4", f"{videos[name].name}: ", VIDEOS[name][1], env=STRICT
    )


def test_the_issues_timestamp_jump_is_refused_by_default(default, tmp_path):
    """1.3 KB that became 900,001 constant-rate frames and held a worker for hours."""
    clip = timestamp_jump(tmp_path / "jump.mp4", only=True)
    assert clip.stat().st_size < 5000
    send = lambda: default.http.post("/v1/jobs", files=upload(target=("jump.mp4", clip.read_bytes())))  # noqa: E731
    problem(attack(default, "36000 s jump", send), 422, "target: 36000.1 s long, over the limit of 3600 s")


@pytest.mark.slow
def test_the_issues_huge_frames_are_refused_by_default(default, tmp_path):
    """The issue's 318 KB two-frame 12000x9000 MP4, processed at 2.5 GB before."""
    clip = tmp_path / "huge.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=gray:size=12000x9000:rate=25:duration=0.08",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        clip,
    )
    send = lambda: default.http.post("/v1/jobs", files=upload(target=("huge.mp4", clip.read_bytes())))  # noqa: E731
    problem(
        attack(default, "12000x9000 video", send),
        422,
        "12000x9000 frames are 108,000,000 pixels, over the limit of 8,847,360",
    )


def test_the_reader_stops_where_the_header_ends(tmp_path):
    """Without limits, a video whose frames run far past its declared length is read as far as a second
    past the declared frames, not filled with repeated frames up to its last timestamp."""
    info = probe(lying_duration(tmp_path / "lying.mkv", 400))
    assert info.duration == pytest.approx(1.0, abs=0.1) and info.frame_count == 10
    yielded = 0
    refusal = r"^lying.mkv: cannot decode \(its timestamps run past the 10 frames its header declares\)$"
    with pytest.raises(MediaError, match=refusal), FrameReader(info) as reader:
        for _ in reader:
            yielded += 1
    assert yielded == info.frame_count + 11  # and a second more at 10 fps


# --- images -------------------------------------------------------------------------------------------


BOMBS = {  # case: (field, declared size, refusal)
    "bomb target": (
        "target",
        (100_000, 100_000),
        "target: 10,000,000,000 pixels, over the limit of 100,000,000",
    ),
    "just over Pillow's guard": (
        "target",
        (20_000, 9_000),
        "target: 180,000,000 pixels, over the limit of 100,000,000",
    ),
    "over the pixel limit": (
        "source",
        (12_000, 12_000),
        "source-1: 12000x12000 is 144,000,000 pixels, over the limit of 100,000,000",
    ),
    "bomb reference": ("reference", (100_000, 100_000), "reference: 10,000,000,000 pixels, over the limit"),
}


@pytest.mark.parametrize("case", BOMBS)
@pytest.mark.parametrize("endpoint", ["/v1/swap", "/v1/jobs"])
def test_pixel_bombs_are_refused_unread(default, endpoint, case):
    field, size, detail = BOMBS[case]
    content = png_declaring(*size, decodable=False)
    files = upload(**{field: (f"{field}.png", content)})
    response = attack(
        default,
        f"{case} on {endpoint}",
        lambda: default.http.post(
            endpoint, files=files, data={"selector": "reference"} if field == "reference" else {}
        ),
    )
    problem(response, 422, detail)


def test_the_request_total_of_pixels_is_bounded(strict):
    """Three 6 KB sources declaring 7000x7000: refused at the second, before any is decoded."""
    source = png_declaring(7000, 7000)
    files = [("source", (f"s{i}.png", source, "image/png")) for i in range(3)] + upload(source=None)
    response = attack(strict, "3 sources of 7000x7000", lambda: strict.http.post("/v1/swap", files=files))
    problem(response, 422, "the request's images hold 98,000,000 pixels, over the limit of 60,000,000")


def test_the_issues_eight_large_sources_are_refused_by_default(default):
    source = png_declaring(7000, 7000)
    files = [("source", (f"s{i}.png", source, "image/png")) for i in range(8)] + upload(source=None)
    response = attack(default, "8 sources of 7000x7000", lambda: default.http.post("/v1/swap", files=files))
    problem(response, 422, "the request's images hold 245,000,000 pixels, over the limit of 200,000,000")


def test_many_sources_are_refused(default):
    """The issue's 500 copies of one small source took 81 s and 2.85 GB."""
    files = [("source", (f"s{i}.jpg", PHOTO, "image/jpeg")) for i in range(500)] + upload(source=None)
    response = attack(default, "500 sources", lambda: default.http.post("/v1/swap", files=files))
    problem(response, 422, "500 source images, over the limit of 10")


def test_the_largest_image_allowed_is_decoded_in_bounded_memory(default):
    """The issue's 12 KB PNG declaring 10000x10000, just under the limit: decoded once, its face looked
    for in a smaller copy (it has none), in a fraction of the 1.4 GB it took."""
    files = upload(source=("big.png", png_declaring(10_000, 10_000)))
    response = attack(
        default,
        "10000x10000 source",
        lambda: default.http.post("/v1/swap", files=files),
        LARGEST_IMAGE_DECODED,
    )
    problem(response, 422, "source-1.png: no face found in this source image")


@pytest.mark.parametrize("kind", ["EPS", "TIFF", "BMP", "GIF", "ICO"])
def test_image_formats_the_product_does_not_document_are_415(default, kind):
    content = image_in(kind)
    response = attack(
        default,
        f"{kind} source",
        lambda: default.http.post("/v1/swap", files=upload(source=("s.img", content))),
    )
    problem(
        response, 415, "source-1 's.img': not an image this service reads; it reads JPEG, PNG or WebP images"
    )
    response = default.http.post("/v1/jobs", files=upload(target=("t.img", content)))
    problem(response, 415, "target 't.img': " + demuxer_refusal(None), ACCEPTED)


def test_image_formats_the_product_does_not_document_are_refused_by_the_cli(triton, tmp_path):
    source = tmp_path / "face.eps"
    source.write_bytes(image_in("EPS"))
    refused_cli(
        triton,
        TWO_FACES,
        tmp_path / "out.jpg",
        "face.eps: not an image in a format this service reads (JPEG, PNG, WEBP)",
        source=source,
    )


def test_a_bomb_target_is_refused_by_the_cli(triton, tmp_path):
    target = tmp_path / "bomb.png"
    target.write_bytes(png_declaring(100_000, 100_000, False))
    refused_cli(
        triton, target, tmp_path / "out.png", "bomb.png: 10,000,000,000 pixels, over the limit of 100,000,000"
    )


# --- the children -------------------------------------------------------------------------------------


def test_ffmpeg_children_run_under_memory_and_cpu_limits(strict, tmp_path):
    """The limits of a video job's decoder and encoder, read from the running children; each is set a
    moment after the child starts (it is still loading its libraries), so the last reading counts.
    The clip is long enough (40 frames) for the encoder to be seen however fast the job runs."""
    clip = moving_photo(tmp_path / "clip.mp4", size="320x240", seconds=4.0, rate=10)
    latest: dict[int, tuple[str, int, int]] = {}
    job = create_job(strict.http, upload(target=("clip.mp4", clip.read_bytes())), {"preset": "ultrafast"})
    while strict.http.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running"):
        for child in psutil.Process(strict.pid).children(recursive=True):
            try:
                # A reading between fork and exec shows Python's command line: once a writer, a writer.
                writer = "pipe:0" in child.cmdline() or latest.get(child.pid, ("",))[0] == "writer"
                role = "writer" if writer else "reader"
                data, cpu = child.rlimit(psutil.RLIMIT_DATA)[0], child.rlimit(psutil.RLIMIT_CPU)[0]
            except psutil.NoSuchProcess:
                continue
            latest[child.pid] = (role, data, cpu)
        time.sleep(0.01)
    wait_job(strict.http, job["id"], timeout=10)
    assert {role for role, _, _ in latest.values()} >= {"reader", "writer"}, latest
    for role, data, cpu in latest.values():
        assert 512 * MB <= data <= 4096 * MB and 30 <= cpu <= 3600, (role, data, cpu)


def test_a_child_over_its_memory_limit_stops(tmp_path):
    """The self-referencing playlist with nothing but the child's memory limit against it (no format
    whitelist): ffprobe fails near its limit instead of growing to gigabytes. (Its resident memory
    also counts the pages of its libraries, which the data limit does not.)"""
    playlist = tmp_path / "loop.m3u8"
    playlist.write_bytes(self_referencing(str(playlist), 50))
    began = time.monotonic()
    with PeakMemory(os.getpid(), program="ffprobe") as peak:
        result = media._run(
            [media.FFPROBE, "-v", "error", "-protocol_whitelist", "file", "-i", f"file:{playlist}"]
        )
    assert result.returncode != 0 and "Cannot allocate memory" in result.stderr, result.stderr[-500:]
    assert media.PROBE_LIMITS.memory / 2 < peak.child < media.PROBE_LIMITS.memory + 128 * MB
    assert time.monotonic() - began < 30
    PEAKS["self-referencing playlist, no whitelist"] = f"ffprobe alone {peak.child / MB:.0f} MB"


def logging_ffprobe(folder: Path, log: Path) -> Path:
    """A folder holding an `ffprobe` that writes its start and end times to `log` around the real one."""
    folder.mkdir()
    script = folder / "ffprobe"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "start $(date +%s.%N)" >> "{log}"\n'
        f'"{shutil.which("ffprobe")}" "$@"\n'
        "status=$?\n"
        f'echo "end $(date +%s.%N)" >> "{log}"\n'
        'exit "$status"\n'
    )
    script.chmod(0o755)
    return folder


def most_at_once(log: Path) -> tuple[int, int]:
    """How many runs the log holds, and the most that overlapped, from their start and end times."""
    events = sorted(
        (float(at), 1 if kind == "start" else -1) for kind, at in map(str.split, log.read_text().splitlines())
    )
    running = most = 0
    for _, step in events:  # at equal times an end sorts before a start
        running += step
        most = max(most, running)
    return sum(step > 0 for _, step in events), most


def test_probes_run_a_few_at_a_time(triton, tmp_path, service_clip, monkeypatch):
    """Eight video uploads at once to a service allowing two probes: never more than two ffprobe,
    as the probes' own start and end times show."""
    log = tmp_path / "probes.log"
    monkeypatch.setenv("PATH", f"{logging_ffprobe(tmp_path / 'bin', log)}:{os.environ['PATH']}")
    service = start(triton, tmp_path, {"probe_processes": 2, "workers": 1})
    try:
        clip = service_clip.read_bytes()

        def post():
            return httpx.post(
                f"{service.url}/v1/jobs",
                files=upload(target=("c.mp4", clip)),
                data={"preset": "ultrafast"},
                timeout=120,
            )

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post(), range(8)))
        assert [answer.status_code for answer in answers] == [202] * 8
        runs, most = most_at_once(log)
        assert runs >= 8 and most <= 2, (runs, most)  # one probe at least per upload
    finally:
        service.close()


def test_the_cli_refuses_a_bad_setting_in_one_line(tmp_path):
    command = swap_command("127.0.0.1:1", TWO_FACES, tmp_path / "o.jpg")
    env = {**os.environ, "FACESWAP_MAX_VIDEO_FRAMES": "many"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert_one_line_error(result, "FACESWAP_MAX_VIDEO_FRAMES: Input should be a valid integer")
