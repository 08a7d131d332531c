"""The API's documentation: `/docs` (Swagger UI) with its scripts and styles served from the
`swagger-ui-bundle-v2` package, so nothing is fetched from elsewhere and the page works offline, and
examples of the request forms and the answers in the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from modelplane import contract

ASSETS = Path(swagger_ui_bundle.swagger_ui_path)
SERVED = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")  # all the page loads
STATIC = "/docs/static"

router = APIRouter(include_in_schema=False)
JOB = {
    "id": "4f9c2a7d1e3b4c5a8b6d0e1f2a3b4c5d",
    "kind": "video",
    "state": "succeeded",
    "progress": 1.0,
    "frames_done": 60,
    "frames_total": 60,
    "created_at": "2026-12-08T00:30:00Z",
    "started_at": "2026-12-08T00:30:01Z",
    "finished_at": "2026-12-08T00:30:19Z",
    "queued_seconds": 0.41,
    "running_seconds": 18.2,
    "attempts": 1,
    "error": None,
    "faces": 120,
    "swapped": 120,
    "warnings": [],
    "stage_seconds": {
        "decode": 0.9,
        "detect": 11.8,
        "embed": 0.1,
        "align": 0.3,
        "swap": 3.1,
        "paste": 1.2,
        "encode": 0.8,
    },
    "result_url": "/v1/jobs/4f9c2a7d1e3b4c5a8b6d0e1f2a3b4c5d/result",
}
# Component name -> one example; forms show the fields a request would typically set.
EXAMPLES: dict[str, dict] = {
    "SwapForm": {"selector": "one", "face_order": "left-right", "enhance": True, "output_format": "png"},
    "JobForm": {"selector": "many", "preset": "veryfast", "container": "mp4", "start": 2.0, "end": 12.5},
    "FacesForm": {"frame": 0, "score_threshold": 0.5},
    "Problem": {
        "detail": "unknown field 'selecter' (did you mean 'selector'?); /v1/swap's fields are listed at /docs"
    },
    "JobStatus": JOB,
    "JobProgress": JOB | {"frames_per_second": 3.3, "seconds_left": 0.0},
    "JobList": {"jobs": [JOB], "total": 1, "limit": 50, "offset": 0},
    "FacesFound": {
        "width": 400,
        "height": 328,
        "faces": [
            {
                "id": "face-Nqydp26lBS0VqLoerqltJJ8pC6k…",
                "box": [139.25, 79.2, 210.86, 169.45],
                "landmarks": [
                    [154.42, 113.21],
                    [187.21, 112.26],
                    [169.57, 135.18],
                    [157.57, 143.23],
                    [189.41, 142.48],
                ],
                "score": 0.7181,
                "thumbnail": "data:image/jpeg;base64,/9j/4AAQSkZJRgABA…",
            }
        ],
    },
    "ServedModels": {
        "models": [
            {"ensemble": contract.DETECT, "role": "detector", "default": True, "ready": True, "size": 640},
            {"ensemble": contract.EMBED, "role": "recognizer", "default": True, "ready": True, "size": 112},
            {
                "ensemble": contract.SWAP,
                "role": "swapper",
                "default": True,
                "ready": True,
                "model": "swapper_twin",
                "family": "inswapper",
                "size": 128,
                "template": "arcface_128",
                "source": "emap",
                "latent_model": contract.LATENT,
                "weight_target": "embedding",
            },
            {
                "ensemble": contract.ENHANCE,
                "role": "enhancer",
                "default": True,
                "ready": True,
                "model": "enhancer_twin",
                "family": "gfpgan",
                "size": 512,
                "template": "ffhq_512",
            },
        ]
    },
    "Readiness": {
        "ready": False,
        "models": {},
        "detail": "Triton at localhost:8001 is not reachable (failed to connect to all addresses): start it "
        "(scripts/triton_local.sh start) or point FACESWAP_TRITON_URL (--triton-url) at its gRPC address",
    },
}


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
    """Serve /docs from the package's files (create the app with docs_url=None and redoc_url=None),
    and put EXAMPLES in the OpenAPI document."""
    app.include_router(router)
    generate = app.openapi

    def with_examples() -> dict:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            live = app.state.services.live.info().model_dump(mode="json")  # this service's own limits
            for name, example in (EXAMPLES | {"LiveInfo": live}).items():
                if name in schemas:
                    schemas[name]["examples"] = [example]
        return app.openapi_schema

    app.openapi = with_examples
