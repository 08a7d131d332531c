"""The web pages in a real browser: Debian's headless Chromium driven by Playwright, the real service, Triton.

The swap page: its controls are the API's options, an image job shows a before/after whose result
differs from the target in the face areas only (boxes from InsightFace's SCRFD) and downloads, a
video job shows its progress events and a player, the job list cancels and deletes, the API key is
asked for once, a bad upload shows the service's own message. The live page: Chromium's fake camera
plays a clip of the shared photo; swapped frames arrive with their face areas changed, and the page
shows the rate. Screenshots go to $FACESWAP_SCREENSHOT_DIR when it is set (the README's come so).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers.clips import ffmpeg, moving_photo
from tests.helpers.live import camera_frame, face_boxes, face_change
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import Service, upload

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that keep Chromium off the network on these machines (no background connections).
QUIET = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 90_000  # milliseconds, for what waits on the CPU Triton
expect.set_options(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def camera_clip(tmp_path_factory) -> Path:
    """A .y4m clip of the shared photo as 640x480 camera frames, for Chromium's fake camera."""
    folder = tmp_path_factory.mktemp("camera")
    still = folder / "frame.png"
    cv2.imwrite(str(still), camera_frame())
    clip = folder / "camera.y4m"
    ffmpeg("-loop", "1", "-i", still, "-t", "2", "-r", "10", "-pix_fmt", "yuv420p", clip)
    return clip


@pytest.fixture(scope="module")
def browser(camera_clip) -> Browser:
    fake_camera = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={camera_clip}",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET + fake_camera)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    service = Service(triton.grpc_url, tmp_path_factory.mktemp("web") / "data", {}).start()
    yield service
    service.close()


@pytest.fixture
def page(browser) -> Page:
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors  # no script error on the page


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return moving_photo(tmp_path_factory.mktemp("web-clip") / "clip.mp4", size="320x240", seconds=3, rate=8)


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("FACESWAP_SCREENSHOT_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def open_page(page: Page, service: Service, path: str = "/") -> None:
    page.goto(service.url + path)
    expect(page.locator("body[data-ready=yes]")).to_be_attached()


def job_row(page: Page, job_id_prefix: str = ""):
    return page.locator(f"#jobs tbody tr[data-job^='{job_id_prefix}']").first


def test_the_page_offers_exactly_the_api_options_with_its_names_and_defaults(page, service):
    open_page(page, service)
    body = service.http.get("/openapi.json").json()["components"]["schemas"]
    form = body["JobForm"]["properties"]
    files = body["Body_create_job_v1_jobs_post"]["properties"]
    names = page.eval_on_selector_all("#job-form [name]", "elements => elements.map(e => e.name)")
    assert sorted(set(names)) == sorted([*form, *files])
    for name, field in form.items():
        control = page.locator(f"#job-form [name='{name}']")
        expect(control).to_have_count(1)
        label = page.locator(f"label[for='{control.get_attribute('id')}']")
        assert name in label.text_content()  # labelled, with the API's name
        default = field.get("default")
        if isinstance(default, bool):
            assert control.is_checked() is default
        elif isinstance(default, int | float):
            assert float(control.input_value()) == default
        else:
            assert control.input_value() == (default or "")  # None: left to the service
        choices = field.get("enum") or next((a["enum"] for a in field.get("anyOf", []) if "enum" in a), None)
        if choices:
            offered = control.locator("option").evaluate_all("options => options.map(o => o.value)")
            assert [value for value in offered if value] == [str(choice) for choice in choices]  # as text


def test_an_image_job_shows_before_and_after_differing_in_the_faces_only(page, service, tmp_path):
    open_page(page, service)
    page.set_input_files("input[name=source]", str(TWO_FACES))
    page.set_input_files("input[name=target]", str(TWO_FACES))
    page.select_option("select[name=output_format]", "png")
    page.get_by_role("button", name="Swap").click()
    expect(page.locator("#result-section")).to_be_visible()
    expect(page.locator("#compare")).to_be_visible()
    expect(page.locator("#progress-text")).to_have_text(re.compile("^succeeded"))
    page.locator("#split").fill("30")  # the slider moves the split
    assert page.eval_on_selector("#compare", "e => e.style.getPropertyValue('--split')") == "30%"
    screenshot(page, "web-page.png")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the result").click()
    saved = tmp_path / "result.png"
    download.value.save_as(saved)
    target = cv2.imread(str(TWO_FACES))
    result = cv2.imread(str(saved))
    assert result.shape == target.shape
    inside, outside = face_change(target, result, face_boxes(target))
    assert inside > 8 and outside < 0.5, (inside, outside)  # PNG: outside the faces, the very pixels
    before = page.eval_on_selector("#before", "img => img.naturalWidth")
    assert before == target.shape[1]


def test_a_face_picked_in_the_target_is_the_only_one_swapped(page, service):
    """The picker shows POST /v1/faces's thumbnails; the face clicked (the right one) is swapped alone."""
    open_page(page, service)
    page.set_input_files("input[name=source]", str(TWO_FACES))
    page.set_input_files("input[name=target]", str(TWO_FACES))
    page.select_option("select[name=output_format]", "png")
    page.fill("input[name=reference_distance]", "0.3")  # the twin recognizer's faces part at 0.3
    page.get_by_role("button", name="Find the faces in the target").click()
    faces = page.locator("#faces button")
    expect(faces).to_have_count(2)
    faces.nth(1).click()
    expect(faces.nth(1)).to_have_attribute("aria-pressed", "true")
    expect(faces.nth(0)).to_have_attribute("aria-pressed", "false")
    page.get_by_role("button", name="Swap").click()
    expect(page.locator("#progress-text")).to_have_text(re.compile("^succeeded"))
    job = service.http.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert (job["faces"], job["swapped"]) == (2, 1)
    target = cv2.imread(str(TWO_FACES))
    result = cv2.imread(str(service.job_folder(job["id"]) / "result.png"))
    left, right = sorted(face_boxes(target), key=lambda box: box[0])
    assert face_change(target, result, [right])[0] > 8 and face_change(target, result, [left])[0] < 0.5


def test_a_video_job_shows_its_progress_events_and_a_player(page, service, clip):
    open_page(page, service)
    page.set_input_files("input[name=source]", str(TWO_FACES))
    page.set_input_files("input[name=target]", str(clip))
    expect(page.locator("#video-details")).to_have_attribute("open", "")  # a video: its options open
    page.select_option("select[name=container]", "webm")
    page.select_option("select[name=video_codec]", "libvpx-vp9")
    page.get_by_role("button", name="Swap").click()
    expect(page.locator("#progress-text")).to_have_text(
        re.compile(r"running · \d+ / 24 frames · [\d.]+ frames/s")
    )
    expect(page.locator("#result-video")).to_be_visible()
    assert page.locator("#progress-text").inner_text().startswith("succeeded · 24 / 24 frames")
    duration = page.wait_for_function(
        "() => { const v = document.getElementById('result-video'); return v.readyState >= 1 && v.duration; }"
    ).json_value()
    assert duration == pytest.approx(3, abs=0.2)  # the player reads the swapped clip


def test_the_job_list_cancels_and_deletes(page, service, tmp_path):
    long_clip = moving_photo(tmp_path / "long.mp4", size="320x240", seconds=10, rate=6)
    job = service.http.post(
        "/v1/jobs", files=upload(target=("long.mp4", long_clip.read_bytes())), data={"preset": "ultrafast"}
    ).json()
    short = job["id"][:8]
    open_page(page, service)
    row = job_row(page, job["id"])
    page.get_by_role("button", name=f"Cancel job {short}").click()
    expect(row.locator("td").nth(2)).to_have_text(re.compile("cancelled"))
    page.get_by_role("button", name=f"Delete job {short}").click()
    expect(row).to_have_count(0)
    assert service.http.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_a_bad_upload_shows_the_service_message(page, service, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    expected = service.http.post("/v1/jobs", files=upload(target=("notes.txt", text.read_bytes()))).json()[
        "detail"
    ]
    open_page(page, service)
    page.set_input_files("input[name=source]", str(TWO_FACES))
    page.set_input_files("input[name=target]", str(text))
    page.get_by_role("button", name="Swap").click()
    expect(page.get_by_role("alert")).to_have_text(expected)
    page.locator("input[name=face_index]").fill("-3")
    page.set_input_files("input[name=target]", str(TWO_FACES))
    page.get_by_role("button", name="Swap").click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("^face_index: Input should be greater than"))


def test_the_api_key_is_asked_for_once_per_tab(browser, triton, tmp_path):
    secured = Service(triton.grpc_url, tmp_path / "data", {"api_key": "s3cret"}).start()
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    try:
        open_page(page, secured)
        expect(page.locator("#key-section")).to_be_visible()
        page.get_by_role("textbox", name="API key").fill("wrong")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-message")).to_have_text("That API key was refused; enter it again.")
        page.get_by_role("textbox", name="API key").fill("s3cret")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#no-jobs")).to_be_visible()
        expect(page.locator("#key-section")).to_be_hidden()
        page.set_input_files("input[name=source]", str(TWO_FACES))
        page.set_input_files("input[name=target]", str(TWO_FACES))
        page.get_by_role("button", name="Swap").click()
        expect(page.locator("#result-section")).to_be_visible()
        page.reload()  # the key stays for the tab's session
        expect(page.locator("#jobs tbody tr")).to_have_count(1)
        expect(page.locator("#key-section")).to_be_hidden()
    finally:
        context.close()
        secured.close()


def test_the_live_page_swaps_the_fake_camera_and_shows_the_rate(page, service, camera_clip):
    open_page(page, service, "/live")
    page.set_input_files("#sources", str(TWO_FACES))
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#live-state")).to_have_text(re.compile("^Running"))
    page.wait_for_function("() => Number(document.getElementById('delivered').textContent) >= 8")
    assert float(page.locator("#fps").inner_text()) > 0
    assert int(page.locator("#latency").inner_text()) > 0
    assert int(page.locator("#dropped").inner_text()) >= 0
    screenshot(page, "live-page.png")
    swapped = page.eval_on_selector("#swapped", "canvas => canvas.toDataURL('image/png')")
    shown = cv2.imdecode(
        np.frombuffer(base64.b64decode(swapped.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR
    )
    camera = cv2.imread(str(camera_clip.parent / "frame.png"))
    assert shown.shape == camera.shape
    inside, outside = face_change(camera, shown, face_boxes(camera))
    assert inside > 8 and outside < 4, (inside, outside)  # camera YUV and two JPEG passes outside
    assert service.http.get("/v1/live").json()["sessions"] == 1
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#live-state")).to_have_text("Stopped.")
    expect(page.get_by_role("alert")).to_be_hidden()


@pytest.mark.parametrize("path", ["/", "/live"])
def test_the_pages_fit_a_phone_and_every_control_is_labelled_and_reachable_by_keyboard(
    browser, service, path
):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    context.set_default_timeout(TIMEOUT)
    page = context.new_page()
    try:
        open_page(page, service, path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
        unlabelled = page.eval_on_selector_all(
            "main input, main select, main button",
            """elements => elements.filter(e => !e.closest('[hidden], details:not([open])')).filter(e =>
                !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()
            ).map(e => e.outerHTML)""",
        )
        assert unlabelled == []
        submit = "Swap" if path == "/" else "Start"
        for _ in range(60):  # Tab through the form until its button has the focus
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.textContent.trim()") == submit:
                break
        else:
            raise AssertionError(f"the {submit} button cannot be reached with Tab")
    finally:
        context.close()
