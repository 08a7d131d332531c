"""The orchestrator's error family: every error a user can act on derives from `FaceSwapError`.

Each boundary (the CLI, the HTTP API, the job workers) catches the base alone: a new error reaches
users as its one-line message, with the HTTP status it declares, without touching the boundaries,
and anything else (a bug) still shows as a bug.
"""

from __future__ import annotations

import errno


class FaceSwapError(Exception):
    """An error for the user: str() is one line; `status` is the HTTP status that reports it."""

    status = 422

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class InputError(FaceSwapError):
    """The inputs or options cannot be used as given."""


class ImageError(InputError):
    """An image could not be read or written; the message names the file."""


class MediaError(InputError):
    """A video could not be probed, decoded or encoded; the message names the file and the reason."""


class UnsupportedMedia(InputError):
    """An upload is not a kind of file the service reads."""

    status = 415


class OverLimit(InputError):
    """An input is within the formats read but over a configured limit; the message names the limit."""


class StorageFull(FaceSwapError):
    """The disk holding uploads or results is full (or the quota is), as these OSError numbers say."""

    status = 507
    ERRNOS = (errno.ENOSPC, errno.EDQUOT)

    def __init__(self, message: str = "the server's disk is full; nothing was stored, try again later"):
        super().__init__(message)


class TritonError(FaceSwapError):
    """Triton could not be reached or refused a request."""

    status = 503


class Cancelled(Exception):
    """A job was cancelled while it ran (control flow, not a failure)."""


class MissingModel(InputError):
    """An option needs a model that this deployment's Triton does not serve (an optional role)."""
