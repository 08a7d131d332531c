"""The model plane's error family: every error a user can act on derives from `ModelPlaneError`.

The command line catches the base alone (and OSError, the environment's: disks and permissions), so
a new error reaches users as its one-line message and anything else still shows as a bug.
"""

from __future__ import annotations


class ModelPlaneError(Exception):
    """An error for the user; str() is one line."""

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class ManifestError(ModelPlaneError):
    """The model manifest is missing, malformed or names an unknown model."""


class FetchError(ModelPlaneError):
    """A model could not be downloaded, copied or verified."""


class InterfaceError(ModelPlaneError):
    """A model file's inputs and outputs do not fit its role."""


class BatchAxisError(ModelPlaneError):
    """A model's batch axis could not be freed, or batch-N differs from N batch-1 runs."""


class PreparationError(ModelPlaneError):
    """The model repository could not be prepared."""


class LocalTritonError(ModelPlaneError):
    """The local Triton server could not be started, found or stopped."""


class CommandError(ModelPlaneError):
    """A command was given what it cannot work with."""
