"""Whose status is told for a closed process (``common.closed``)."""

from __future__ import annotations

import pytest
from temporalio.client import WorkflowExecutionStatus as S

from common.closed import closed_by_temporal


@pytest.mark.parametrize("own_final", [False, True])
def test_terminated_and_timed_out_are_temporals_whatever_the_process_recorded(
    own_final: bool,
) -> None:
    assert closed_by_temporal(S.TERMINATED, own_final) == "terminated"
    assert closed_by_temporal(S.TIMED_OUT, own_final) == "timed-out"


def test_a_cancel_is_temporals_only_when_the_process_recorded_no_final_status() -> None:
    assert closed_by_temporal(S.CANCELED, own_final=False) == "canceled"
    # Its cancel cleanup recorded ``failed`` (reason cancelled) before it closed.
    assert closed_by_temporal(S.CANCELED, own_final=True) is None


@pytest.mark.parametrize("status", [None, S.RUNNING, S.COMPLETED, S.FAILED, S.CONTINUED_AS_NEW])
def test_otherwise_the_process_speaks_for_itself(status: S | None) -> None:
    assert closed_by_temporal(status, own_final=False) is None
    assert closed_by_temporal(status, own_final=True) is None
