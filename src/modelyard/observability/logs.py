"""Log lines: plain text for people, or one JSON object per line for log pipelines, and the
access log (one line per inference call).

``--log-format json`` writes every record as ``{"time", "level", "logger", "message"}`` plus
``request_id`` when the record was logged while serving a call, ``exception`` when it carries a
traceback, and the access fields on access lines. Every line parses on its own.

The access log (``--access-log``) goes to the ``modelyard.access`` logger at INFO: request id,
protocol, method (HTTP method and path, or the gRPC method), model, version, status, latency
in milliseconds, and bytes in and out. In text form (one line; wrapped here)::

    access 17 kserve_rest "POST /v2/models/m/infer" model=m version=1 status=200 ms=1.840
        in=120 out=96
"""

from __future__ import annotations

import enum
import json
import logging
import sys
import time
from typing import Any, TextIO

from modelyard.observability import calls

ACCESS_LOGGER = "modelyard.access"
_ACCESS_FIELDS = (
    "request_id", "protocol", "method", "model", "version", "status", "duration_ms", "bytes_in",
    "bytes_out",
)  # fmt: skip


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}"
            + time.strftime("%z", time.localtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is None:
            request_id = calls.request_id()
        if request_id is not None:
            doc["request_id"] = request_id
        for name in _ACCESS_FIELDS[1:]:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class _TextFormatter(logging.Formatter):
    """The text format, with ``[request N]`` after the logger name while serving a call."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = calls.request_id() if record.name != ACCESS_LOGGER else None
        if request_id is not None:
            head, sep, tail = text.partition(": ")
            return f"{head} [request {request_id}]{sep}{tail}"
        return text


def configure(level: str, fmt: LogFormat, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (stderr) in ``fmt``, at ``level`` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class AccessLog:
    """Writes one line per ended call to the ``modelyard.access`` logger."""

    def __init__(self) -> None:
        self._log = logging.getLogger(ACCESS_LOGGER)
        self._log.setLevel(logging.INFO)  # on when asked for, whatever --log-level says

    def write(self, call: calls.Call, duration_s: float) -> None:
        ms = round(duration_s * 1000.0, 3)
        fields = {
            "request_id": call.request_id,
            "protocol": call.protocol.value,
            "method": call.method,
            "model": call.model,
            "version": call.version,
            "status": call.status,
            "duration_ms": ms,
            "bytes_in": call.bytes_in,
            "bytes_out": call.bytes_out,
        }
        self._log.info(
            'access %d %s "%s" model=%s version=%s status=%s ms=%.3f in=%d out=%d',
            call.request_id,
            call.protocol.value,
            call.method,
            call.model or "-",
            call.version or "-",
            call.status,
            ms,
            call.bytes_in,
            call.bytes_out,
            extra=fields,
        )
