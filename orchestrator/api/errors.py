"""Errors as HTTP problems: JSON `{"detail": "..."}` in one line, never a stack trace."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from orchestrator.errors import FaceSwapError
from orchestrator.options import validation_message

log = logging.getLogger(__name__)


async def _invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": validation_message(error, skip=1)}, 422)


async def _user_error(_: Request, error: FaceSwapError) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, error.status)


async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s", reference, exc_info=error)
    return JSONResponse(
        {"detail": f"internal error (reference {reference}); the service log has the details"}, 500
    )


def add_error_handlers(app: FastAPI) -> None:
    """Validation problems as 422, the family's errors with their own status, anything else as 500."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(FaceSwapError, _user_error)
    app.add_exception_handler(Exception, _internal_error)
