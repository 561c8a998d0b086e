"""Structured logs: one JSON object per line on stderr (the journal adds
time and unit). Incidents and lifecycle events carry an `event` field that a
log pipeline can select on."""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER_NAME = "edgewarden.agent"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup(level: int = logging.INFO) -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLineFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger


def log(level: int, message: str, **fields) -> None:
    logging.getLogger(LOGGER_NAME).log(level, message, extra={"fields": fields})


def info(message: str, **fields) -> None:
    log(logging.INFO, message, **fields)


def warning(message: str, **fields) -> None:
    log(logging.WARNING, message, **fields)


def error(message: str, **fields) -> None:
    log(logging.ERROR, message, **fields)


def now() -> float:
    return time.time()
