"""The API's documentation pages, `/docs` (Swagger UI) with its scripts and styles served from the
`swagger-ui-bundle-v2` package: nothing is fetched from elsewhere, so the page works offline."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
SERVED = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")  # all the page loads
STATIC = "/docs/static"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_page() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="triton-faceswap API",
        swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
    )


@router.get(f"{STATIC}/{{name}}")
def swagger_asset(name: str) -> FileResponse:
    if name not in SERVED:
        raise HTTPException(404, f"no file {name[:60]!r}")
    return FileResponse(ASSETS / name, headers={"Cache-Control": "max-age=86400"})


def add_docs(app: FastAPI) -> None:
    """Serve /docs from the package's files (create the app with docs_url=None and redoc_url=None)."""
    app.include_router(router)
