"""`/docs` in a real browser with every request off the service refused: Swagger UI's files come
from the service itself, and the page shows each resource's routes. The service runs without Triton
(the docs need none), so its address is a closed port."""

from __future__ import annotations

import pytest
from playwright.sync_api import Route, expect, sync_playwright

from modelplane.local_server import free_port
from tests.helpers.service import Service
from tests.test_web import CHROMIUM, QUIET

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = Service(f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("docs") / "data", {}).start()
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
