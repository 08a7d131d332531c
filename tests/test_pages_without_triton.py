"""The pages in a real browser, the service's Triton address a closed port: `/docs` with every request
off the service refused (Swagger UI's files come from the service itself) shows each resource's
routes; the live page tells why a session ended in words, with the whole reason."""

from __future__ import annotations

import pytest
from playwright.sync_api import Route, expect, sync_playwright

from modelplane.local_server import free_port
from orchestrator.api.docs import EXAMPLES
from orchestrator.api.forms import JobForm, SwapForm
from orchestrator.api.routes.faces import FacesForm, FacesFound
from orchestrator.api.routes.jobs import JobProgress
from orchestrator.api.routes.models import ServedModels
from orchestrator.api.schemas import JobList, JobStatus, Problem, Readiness
from tests.helpers.paths import TWO_FACES
from tests.helpers.service import Service
from tests.test_web import CHROMIUM, QUIET, browser, camera_clip  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    closed = f"127.0.0.1:{free_port()}"
    service = Service(closed, tmp_path_factory.mktemp("no_triton") / "data", {}).start()
    yield service
    service.close()


def test_docs_render_offline_with_every_resource_tagged(service):
    refused: list[str] = []

    def offline(route: Route) -> None:
        if route.request.url.startswith(service.url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        try:
            context = browser.new_context()
            context.route("**/*", offline)
            page = context.new_page()
            page.goto(f"{service.url}/docs")
            for tag in ("swap", "jobs", "faces", "models", "live", "health"):
                expect(page.locator(f"#operations-tag-{tag}")).to_be_visible(timeout=30_000)
            expect(page.locator(".opblock-summary-path[data-path='/v1/swap']")).to_be_visible()
            assert page.locator(".opblock").count() >= 12
        finally:
            browser.close()
    assert refused == []
    for url in ("/redoc", "/docs/static/index.html", "/docs/static/..%2Fapp.py"):
        assert service.http.get(url).status_code == 404


def test_the_live_page_shows_the_whole_reason_a_session_ended_in_words(browser, service):  # noqa: F811
    page = browser.new_page()
    try:
        page.goto(f"{service.url}/live")
        expect(page.locator("body[data-ready=yes]")).to_be_attached()
        page.set_input_files("#sources", str(TWO_FACES))
        page.get_by_role("button", name="Start").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text(
            "The live session ended: the service cannot take it now; try again later."
        )
        text = alert.inner_text()
        assert f"Triton at {service.triton_url} is not reachable" in text
        assert text.endswith(
            "or point FACESWAP_TRITON_URL (--triton-url) at its gRPC address"
        )  # not cut short
        assert len(text.encode()) > 123 and "1013" not in text  # longer than a close reason may be; no code
        expect(page.locator("#live-state")).to_have_text("Stopped.")
    finally:
        page.close()


def test_every_route_is_tagged_and_every_answer_and_form_has_an_example(service):
    document = service.http.get("/openapi.json").json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert operations and all(len(op.get("tags", [])) == 1 for op in operations)
    assert {tag["name"] for tag in document["tags"]} == {op["tags"][0] for op in operations}
    schemas = document["components"]["schemas"]
    for name in ("SwapForm", "JobForm", "FacesForm", "Problem", "JobStatus", "JobList", "FacesFound"):
        assert schemas[name]["examples"], name
    for name in ("ServedModels", "LiveInfo", "Readiness"):
        assert schemas[name]["examples"], name
    assert schemas["LiveInfo"]["examples"][0] == service.http.get("/v1/live").json()  # its own limits


def test_the_examples_are_valid_answers_and_forms():
    models = {
        "SwapForm": SwapForm,
        "JobForm": JobForm,
        "FacesForm": FacesForm,
        "Problem": Problem,
        "JobStatus": JobStatus,
        "JobProgress": JobProgress,
        "JobList": JobList,
        "FacesFound": FacesFound,
        "ServedModels": ServedModels,
        "Readiness": Readiness,
    }
    assert set(models) == set(EXAMPLES)
    for name, model in models.items():
        model.model_validate(EXAMPLES[name])
