"""Whose status to tell for a closed process: its own, unless Temporal closed it by itself.

A process records its status itself: in its state (the ``state`` query), its ``ProcessStatus``
search attribute and its record in the process table. Only what its own code ran shows there. A
``temporal workflow terminate``, or a run or execution timeout set at start, closes the run without
a line of it running, so all three keep the last status it wrote (``pending``, ``in-progress``),
and the query still answers that state: a closed workflow's query is answered by replaying it.
Read alone, they show a process waiting for a decision that can no longer be taken.

So Temporal's execution status wins when Temporal, not the workflow, closed it: TERMINATED and
TIMED_OUT always, CANCELED when the workflow recorded no final status of its own (its cancel
cleanup records ``failed``, reason ``cancelled``, before it closes Canceled; a cancel that closed
it without that cleanup says nothing the record shows). Otherwise the workflow's own status.

A reset or a continue-as-new never shows here: a process is described by its id, which names its
latest run, and that run is running (or closed in its own right).
"""

from __future__ import annotations

from temporalio.client import WorkflowExecutionStatus

# Closed without the workflow's own code running, whatever the workflow last recorded.
CLOSED_BY_TEMPORAL = frozenset(
    {WorkflowExecutionStatus.TERMINATED, WorkflowExecutionStatus.TIMED_OUT}
)


def temporal_status_name(status: WorkflowExecutionStatus) -> str:
    """Temporal's status as the process statuses are spelt: ``terminated``, ``timed-out``."""
    return status.name.lower().replace("_", "-")


def closed_by_temporal(status: WorkflowExecutionStatus | None, own_final: bool) -> str | None:
    """Temporal's status when Temporal closed the process by itself, else None.

    ``own_final``: whether the workflow recorded a final status (completed or failed) itself.
    """
    if status is None:
        return None
    cancelled_unrecorded = status == WorkflowExecutionStatus.CANCELED and not own_final
    if status in CLOSED_BY_TEMPORAL or cancelled_unrecorded:
        return temporal_status_name(status)
    return None
