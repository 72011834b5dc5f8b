"""One logging setup for every process: plain text for people, JSON lines for collectors.

Each record carries the process id it concerns, so one grep (or one log query) follows a process
across the worker, the callbacks API and the simulator. The id comes, in this order, from
``extra={"process_id": ...}``, from Temporal's workflow and activity loggers (their
``temporal_workflow`` / ``temporal_activity`` details name the workflow id), or from
:func:`bind_process_id` for code that handles one process at a time.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

from common.ids import PROCESS_ID_PREFIX

_process_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "approval_process_id", default=None
)

# Attributes every LogRecord has; anything else came from ``extra`` and goes into JSON output.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "process_id",
    "taskName",
}


class LoggingSettings(Protocol):
    """What :func:`configure` reads; ``common.settings.Settings`` has it, so do tools' settings."""

    @property
    def log_json(self) -> bool: ...

    @property
    def log_level(self) -> str: ...


@contextmanager
def bind_process_id(process_id: str | None) -> Iterator[None]:
    """Tag every log line written inside the block (and tasks it starts) with ``process_id``."""
    token = _process_id.set(process_id)
    try:
        yield
    finally:
        _process_id.reset(token)


def _temporal_workflow_id(record: logging.LogRecord) -> str | None:
    for attribute in ("temporal_workflow", "temporal_activity"):
        details = getattr(record, attribute, None)
        if isinstance(details, dict):
            workflow_id = details.get("workflow_id")
            if isinstance(workflow_id, str) and workflow_id.startswith(PROCESS_ID_PREFIX):
                return workflow_id
    return None


class ProcessIdFilter(logging.Filter):
    """Sets ``record.process_id`` (possibly None) on every record that passes a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = getattr(record, "process_id", None)
        if not current:
            record.process_id = _temporal_workflow_id(record) or _process_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time level logger [process-…] message``; the bracket only when a process is known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(process_tag)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        process_id = getattr(record, "process_id", None)
        record.process_tag = f"[{process_id}] " if process_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        process_id = getattr(record, "process_id", None)
        if process_id:
            entry["process_id"] = process_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRIBUTES and key != "process_tag":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(settings: LoggingSettings, stream: Any = None) -> None:
    """Replace the root logger's handlers with one writing to ``stream`` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ProcessIdFilter())
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Their per-request lines drown ours; warnings still come through.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
