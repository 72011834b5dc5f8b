"""Log lines carry the process id, as text or as JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from common.logging import bind_process_id, configure


@dataclass
class LogSettings:
    log_json: bool
    log_level: str = "INFO"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.mark.usefixtures("restore_root_logger")
def test_json_lines_carry_the_process_id_from_every_source() -> None:
    stream = io.StringIO()
    configure(LogSettings(log_json=True), stream)
    log = logging.getLogger("test")
    log.info("from extra %s", 1, extra={"process_id": "process-a", "command": "command-one"})
    with bind_process_id("process-b"):
        log.info("from the context")
    log.info("from an activity", extra={"temporal_activity": {"workflow_id": "process-c"}})
    log.info("from the mutex", extra={"temporal_workflow": {"workflow_id": "mutex-x"}})

    entries = [json.loads(line) for line in lines(stream)]
    assert [e.get("process_id") for e in entries] == ["process-a", "process-b", "process-c", None]
    assert entries[0]["message"] == "from extra 1"
    assert entries[0]["command"] == "command-one"
    assert entries[0]["level"] == "INFO" and entries[0]["logger"] == "test"


@pytest.mark.usefixtures("restore_root_logger")
def test_text_lines_show_the_process_id_when_known() -> None:
    stream = io.StringIO()
    configure(LogSettings(log_json=False), stream)
    configure(LogSettings(log_json=False), stream)  # configuring twice does not double lines
    log = logging.getLogger("test")
    log.info("plain")
    with bind_process_id("process-b"):
        log.warning("tagged")

    first, second = lines(stream)
    assert first.endswith("INFO    test plain")
    assert second.endswith("WARNING test [process-b] tagged")
