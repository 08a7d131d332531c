"""The service's logs never hold an API key: `?api_key=` (live clients that cannot set headers) is
written as `api_key=[redacted]` in the access and error logs."""

from __future__ import annotations

import logging
import re

_KEY = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)
REDACTED_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


class KeyRedaction(logging.Filter):
    """Rewrites a record's message with any `api_key=` value replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _KEY.search(message):
            record.msg, record.args = _KEY.sub(r"\1[redacted]", message), None
        return True


def redact_keys() -> None:
    """Install the redaction on the loggers that write request targets."""
    for name in REDACTED_LOGGERS:
        logging.getLogger(name).addFilter(KeyRedaction())
