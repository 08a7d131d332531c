"""The web pages: `/` (swap photos and videos as jobs) and `/live` (the webcam), and their static files.

The files are plain HTML, CSS and JavaScript modules in the package (`orchestrator/web/`), with no
build step and nothing fetched from elsewhere. The pages build their option controls from the
service's own OpenAPI document, so they offer exactly the API's options.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.exceptions import HTTPException
from fastapi.responses import FileResponse

WEB = Path(__file__).resolve().parents[2] / "web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
FILES = {path.name: path for path in WEB.iterdir() if path.suffix in MEDIA_TYPES}
NO_STALE = {"Cache-Control": "no-cache"}  # revalidated by ETag, so an upgrade shows at once
# The pages load their own files only, show results as blob: URLs and face thumbnails as data: URLs,
# and are never framed by another page.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise HTTPException(404, f"no file {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=NO_STALE | PAGE_HEADERS)


@router.get("/")
def index_page() -> FileResponse:
    return _file("index.html")


@router.get("/live")
def live_page() -> FileResponse:
    return _file("live.html")


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    return _file(name)
