"""Errors as HTTP problems: JSON `{"detail": "..."}` in one line, never a stack trace."""

from __future__ import annotations

import logging
import uuid

import anyio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchestrator.errors import FaceSwapError, StorageFull, TritonError
from orchestrator.options import validation_message
from orchestrator.triton_health import RETRY_AFTER

log = logging.getLogger(__name__)


async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_message(error, skip=1)}, 422)


async def _user_error(request: Request, error: FaceSwapError) -> JSONResponse:
    if isinstance(error, TritonError):  # why the model plane cannot work, when it is down or loading
        problem = await anyio.to_thread.run_sync(request.app.state.services.health.problem)
        return JSONResponse(
            {"detail": problem or str(error)}, error.status, {"Retry-After": str(RETRY_AFTER)}
        )
    return JSONResponse({"detail": str(error)}, error.status)


def _disk_full(error: BaseException | None) -> bool:
    return isinstance(error, OSError) and error.errno in StorageFull.ERRNOS


async def _os_error(request: Request, error: OSError) -> JSONResponse:
    """A full disk is the honest 507; any other OSError is a bug's 500."""
    if _disk_full(error):
        return await _user_error(request, StorageFull())
    return await _internal_error(request, error)


async def _http_error(request: Request, error: StarletteHTTPException) -> Response:
    """FastAPI answers any failure to parse a body with 400; when the cause is a full temporary folder
    (multipart parsing spools uploads there before any route runs), that is the server's 507."""
    if _disk_full(error.__cause__):
        return await _user_error(request, StorageFull())
    return await http_exception_handler(request, error)


async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s", reference, exc_info=error)
    return JSONResponse(
        {"detail": f"internal error (reference {reference}); the service log has the details"}, 500
    )


def add_error_handlers(app: FastAPI) -> None:
    """Validation problems as 422, the family's errors with their own status, a full disk as 507,
    anything else as 500."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(FaceSwapError, _user_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
