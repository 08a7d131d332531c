"""The HTTP API: a synchronous image swap, durable jobs for images and videos, health, metrics.

    POST   /v1/swap               multipart `source` (repeatable), `target`, [`reference`], options
                                  -> the swapped image                              (routes/swap.py)
    POST   /v1/jobs               the same fields (image or video target) -> 202, the job
    GET    /v1/jobs               newest first, `limit` and `offset`, optional `state`
    GET    /v1/jobs/{id}          state, progress, timings, error
    GET    /v1/jobs/{id}/events   the job's progress as server-sent events
    GET    /v1/jobs/{id}/result   the result file
    DELETE /v1/jobs/{id}          cancel a queued or running job; delete a finished one (routes/jobs.py)
    WS     /v1/live               live swapping of a camera stream; GET: its limits   (routes/live.py)
    GET    /  /live               the web pages                                        (routes/web.py)
    GET    /healthz  /readyz  /metrics                                              (routes/health.py)

`create_app` (app.py) assembles the routers, the services they reach through dependencies
(services.py), the error handlers (errors.py) and the middleware (middleware.py).
"""

from orchestrator.api.app import create_app

__all__ = ["create_app"]
