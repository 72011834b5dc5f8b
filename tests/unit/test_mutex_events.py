"""``state_from_events``: a closed mutex run's state read from its events, for a run no worker can
replay. Checked against every recorded mutex history, whose last state is known: the state a run
handed on at continue-as-new, or nobody holding or waiting (each recording ends idle)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory

from activities.mutex import adopted, state_from_events
from common.payloads import DATA_CONVERTER
from workflows.messages import MutexInput, MutexState

HISTORIES = Path(__file__).resolve().parents[1] / "histories"
MUTEX = sorted(
    p for p in HISTORIES.glob("*/*.json") if "mutex" in p.stem and "process" not in p.stem
)
CONVERTER = DATA_CONVERTER.payload_converter
# The runs that did not end idle, and who waited when they closed: this one was wedged (its first
# task failed for ever, see test_mutex_operators) and terminated, its only request never granted.
ENDED_WAITING = {"ts_mutex_wedged_by_overflowing_lease": ["h"]}


def _history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


@pytest.mark.parametrize("path", MUTEX, ids=[f"{p.parent.name}/{p.stem}" for p in MUTEX])
def test_the_state_read_from_events_is_the_state_the_run_ended_with(path: Path) -> None:
    events = list(_history(path).events)
    state = state_from_events("any", events, CONVERTER)
    last = events[-1]
    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        attributes = last.workflow_execution_continued_as_new_event_attributes
        (carried,) = CONVERTER.from_payloads(list(attributes.input.payloads), [MutexInput])
        assert carried.state is not None
        expected = carried.state
        assert (state.holder and state.holder.lease_id) == (
            expected.holder and expected.holder.lease_id
        )
        assert (state.holder and state.holder.holder_workflow_id) == (
            expected.holder and expected.holder.holder_workflow_id
        )
        assert [r.request_id for r in state.queue] == [r.request_id for r in expected.queue]
        assert state.next_lease_id == expected.next_lease_id
    else:
        assert state.holder is None, state.holder
        assert [r.request_id for r in state.queue] == ENDED_WAITING.get(path.stem, [])
    assert state.taking_over_from is None


def test_a_run_closed_before_its_take_over_answered_is_still_taking_over() -> None:
    (path,) = [p for p in MUTEX if p.parent.name == "v5" and p.stem == "mutex_takeover_terminated"]
    events = list(_history(path).events)
    answered = next(
        i
        for i, e in enumerate(events)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    )
    state = state_from_events("any", events[:answered], CONVERTER)
    started = events[0].workflow_execution_started_event_attributes
    (given,) = CONVERTER.from_payloads(list(started.input.payloads), [MutexInput])
    assert given.previous_run_id is not None
    assert state.taking_over_from == given.previous_run_id
    assert state.holder is None


def test_a_run_that_granted_is_not_taking_over_though_its_start_named_a_previous_run() -> None:
    """A run whose start named a previous run it never read (a build before the patch
    ``mutex-takes-over`` ran its first task) granted H. Its grant must stand: following the
    previous run back would adopt that run's holder (here nobody) and drop H, and the next run
    would grant the lock beside H.

    Before, the rebuild reported the run as still taking over whenever its start named a run."""
    (path,) = [p for p in MUTEX if p.parent.name == "v5" and p.stem == "mutex_lease_revoked"]
    events = list(_history(path).events)
    started = events[0].workflow_execution_started_event_attributes
    (given,) = CONVERTER.from_payloads(list(started.input.payloads), [MutexInput])
    assert given.state is None and given.previous_run_id is None
    renamed = given.model_copy(update={"previous_run_id": "earlier-run"})
    started.input.CopyFrom(Payloads(payloads=CONVERTER.to_payloads([renamed])))
    granted = next(
        i
        for i, e in enumerate(events)
        if e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED
    )
    assert state_from_events("any", events[:granted], CONVERTER).taking_over_from == "earlier-run"
    state = state_from_events("any", events[: granted + 1], CONVERTER)
    assert state.holder is not None
    assert state.taking_over_from is None
    # What recover_mutex makes of it, had it followed the run back all the same.
    merged = adopted(state, MutexState(resource="any"))
    assert merged.holder == state.holder


def test_a_release_deferred_by_a_run_closed_mid_take_over_frees_the_holder_it_adopts() -> None:
    """A run got the holder's release while taking over and was closed before its take-over
    answered: its rebuild keeps the release, and whoever follows it back to the run with that
    holder applies it. Before, the release was dropped and the holder kept the lock."""
    (path,) = [
        p
        for p in MUTEX
        if p.parent.name == "v6" and p.stem == "mutex_takeover_release_before_first_task"
    ]
    events = list(_history(path).events)
    answered = next(
        i
        for i, e in enumerate(events)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    )
    closed = state_from_events("any", events[:answered], CONVERTER)
    assert closed.taking_over_from is not None and closed.holder is None
    assert len(closed.deferred_releases) == 1
    result = events[answered].activity_task_completed_event_attributes.result
    (earlier,) = CONVERTER.from_payloads(list(result.payloads), [MutexState])
    assert earlier.holder is not None
    assert earlier.holder.lease_id == closed.deferred_releases[0].lease_id
    merged = adopted(closed, earlier)
    assert merged.holder is None
    assert not merged.deferred_releases
