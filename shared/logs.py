"""Structured logs: one JSON object per line, carrying the message id and user id where known.

Call sites pass context through ``extra``: ``log.info("delivered", extra={"message_id": m, "user_id": u})``.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_CONTEXT_FIELDS = ("message_id", "user_id", "node", "count", "code", "error", "batch", "peer", "port", "url")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "event": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every failed handshake at ERROR with a traceback; our own handlers log those.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
