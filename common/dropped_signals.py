"""Signals the worker had to drop, counted for Prometheus and logged at ERROR with the workflow id.

The SDK decodes a signal's argument before any handler or interceptor sees it. When that fails
(a sender with a message this code cannot read), temporalio logs "Failed deserializing signal
input for ..." on its ``temporalio.worker._workflow_instance`` logger and drops the signal: the
workflow carries on, and the sender, whose signal the server accepted, never hears of it. That
log line is the only trace, so a handler on that logger turns it into a counter next to the SDK's
own metrics and one line of ours that names the workflow.

A drop is seen again each time a worker replays the history that holds the signal (a restart, an
evicted cache), so the counter says "drops observed by this worker", not "distinct signals".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from temporalio.common import MetricMeter

from common.ids import PROCESS_ID_PREFIX

# Where temporalio 1.35 logs the drop, and how (worker/_workflow_instance.py,
# _process_signal_job). tests/integration/test_versioned_worker.py sends a real undecodable
# signal, so an SDK that words it differently fails there, not silently in production.
SDK_LOGGER = "temporalio.worker._workflow_instance"
_DROPPED = re.compile(
    r"Failed deserializing signal input for (?P<signal>.+?) on workflow (?P<workflow_type>\S+)"
    r" with ID (?P<workflow_id>.+) and run ID (?P<run_id>\S+), dropping the signal"
)

METRIC = "approval_signals_dropped_total"
log = logging.getLogger("worker.signals")


class DroppedSignalCounter(logging.Handler):
    """Counts each "dropping the signal" record of the SDK and logs it as ours, at ERROR."""

    def __init__(self, meter: MetricMeter) -> None:
        super().__init__(level=logging.ERROR)
        self._counter = meter.create_counter(
            METRIC, "Signals the worker dropped because their input could not be decoded."
        )

    def emit(self, record: logging.LogRecord) -> None:
        match = _DROPPED.match(record.getMessage())
        if match is None:
            return
        signal, workflow_type, workflow_id, run_id = match.group(
            "signal", "workflow_type", "workflow_id", "run_id"
        )
        # The SDK also attaches the ids as data: trust those over the parsed text.
        details = getattr(record, "temporal_workflow", None)
        if isinstance(details, dict):
            workflow_id = str(details.get("workflow_id", workflow_id))
            run_id = str(details.get("run_id", run_id))
        # Labels name the kind of message, never the workflow: ids would grow without bound.
        self._counter.with_additional_attributes(
            {"workflow_type": workflow_type, "signal": signal}
        ).add(1)
        log.error(
            "signal %s to %s %s (run %s) dropped: its input does not decode with this code; "
            "the sender was not told",
            signal,
            workflow_type,
            workflow_id,
            run_id,
            extra={
                "workflow_id": workflow_id,
                "signal": signal,
                # Tags the line like every other line about this process (common/logging.py).
                "process_id": workflow_id if workflow_id.startswith(PROCESS_ID_PREFIX) else None,
            },
        )


@contextmanager
def counting_dropped_signals(meter: MetricMeter) -> Iterator[DroppedSignalCounter]:
    """Count and log dropped signals while the block runs (the worker's lifetime)."""
    handler = DroppedSignalCounter(meter)
    sdk_logger = logging.getLogger(SDK_LOGGER)
    sdk_logger.addHandler(handler)
    try:
        yield handler
    finally:
        sdk_logger.removeHandler(handler)
