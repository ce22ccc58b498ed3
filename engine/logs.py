"""Structured logging: one JSON object per line, event name plus key/value fields.

Call sites pass opaque keys (study key, job id, AE titles), never patient data.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON line with its ``fields`` merged in."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        if record.exc_info:
            payload["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(payload, default=str)


class StructuredLogger:
    """A thin wrapper: ``log.info("instance.stored", job=..., bytes=...)``."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=exc_info)


def get_logger(name: str) -> StructuredLogger:
    """Return the structured logger for a module (``get_logger(__name__)``)."""
    return StructuredLogger(name)


class _CurrentStderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at each record, not the one at configuration.

    A thread that logs while the process swaps ``sys.stderr`` (a test runner
    capturing output, an embedding application) then writes to the live stream
    instead of failing on a closed one.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # under the handler's lock (Handler.handle holds it around emit)
        super().emit(record)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Send JSON lines to ``stream`` (the current stderr when None) at ``level``; quiet the DICOM libraries."""
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for chatty in ("pynetdicom", "highdicom"):  # per-PDU / per-module chatter, with UIDs
        logging.getLogger(chatty).setLevel(logging.WARNING)
    silence_value_warnings()
    logging.Formatter.converter = time.gmtime


def silence_value_warnings() -> None:
    """Stop pydicom quoting DICOM values (a patient's name, a birth date) in warnings and log lines.

    pydicom checks every value it reads or writes and, in its default mode,
    only warns, with the value in the message, through both ``warnings`` (raw
    stderr) and its logger (this log). Engine processes never act on those
    warnings, so value checking is off there and the ``pydicom`` logger passes
    errors only; what the engine writes is checked for conformance by its tests
    (pydicom round trips, highdicom, dciodvfy), which keep pydicom's default.
    """
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
