"""Where the time goes, read from the dev server's own history timestamps.

Every event of a history carries the server's time, so the hops between two workflows and the
phases of one can be timed on one clock: when a workflow task started (what ``workflow.now()``
says), when its commands were recorded (the task's completion), when a signal or an activity
task reached the server, when the worker picked a task up.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

E = EventType


def _payload(payloads: Iterable[object]) -> dict[str, object]:
    for payload in payloads:
        try:
            decoded = json.loads(payload.data)  # type: ignore[attr-defined]
        except ValueError:
            return {}
        return decoded if isinstance(decoded, dict) else {}
    return {}


@dataclass
class History:
    """One run's events with the lookups the profiles need."""

    events: list[HistoryEvent]

    @classmethod
    def of(cls, history: WorkflowHistory) -> History:
        return cls(list(history.events))

    def at(self, event_id: int) -> HistoryEvent:
        return self.events[event_id - 1]

    @staticmethod
    def time(event: HistoryEvent) -> datetime:
        return event.event_time.ToDatetime()

    def first(
        self,
        kind: EventType.ValueType,
        after: int = 0,
        where: Callable[[HistoryEvent], bool] = bool,
    ) -> HistoryEvent | None:
        for event in self.events[after:]:
            if event.event_type == kind and where(event):
                return event
        return None

    def all(self, kind: EventType.ValueType) -> list[HistoryEvent]:
        return [e for e in self.events if e.event_type == kind]

    def signal_sent(self, name: str, **payload: object) -> HistoryEvent | None:
        """The ``SignalExternalWorkflowExecutionInitiated`` of ``name`` carrying ``payload``."""

        def match(e: HistoryEvent) -> bool:
            a = e.signal_external_workflow_execution_initiated_event_attributes
            return a.signal_name == name and _contains(_payload(a.input.payloads), payload)

        return self.first(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED, where=match)

    def signal_received(self, name: str, **payload: object) -> HistoryEvent | None:
        def match(e: HistoryEvent) -> bool:
            a = e.workflow_execution_signaled_event_attributes
            return a.signal_name == name and _contains(_payload(a.input.payloads), payload)

        return self.first(E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED, where=match)

    def task_started_by(self, command: HistoryEvent) -> HistoryEvent:
        """The workflow task start whose completion recorded ``command``."""
        a = _command_task_completed(command)
        completed = self.at(a)
        return self.at(completed.workflow_task_completed_event_attributes.started_event_id)

    def task_after(self, event: HistoryEvent) -> tuple[HistoryEvent, HistoryEvent]:
        """(scheduled, started) of the first workflow task that saw ``event``."""
        started = self.first(E.EVENT_TYPE_WORKFLOW_TASK_STARTED, after=event.event_id)
        if started is None:
            raise LookupError(f"no workflow task after event {event.event_id}")
        scheduled = self.at(started.workflow_task_started_event_attributes.scheduled_event_id)
        return scheduled, started

    def activity(self, name: str, after: int = 0) -> tuple[HistoryEvent, ...] | None:
        """(scheduled, started, closed) of the first activity ``name`` scheduled after ``after``."""
        scheduled = self.first(
            E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            after=after,
            where=lambda e: e.activity_task_scheduled_event_attributes.activity_type.name == name,
        )
        if scheduled is None:
            return None
        sid = scheduled.event_id
        started = self.first(
            E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            where=lambda e: e.activity_task_started_event_attributes.scheduled_event_id == sid,
        )
        closed = self.first(
            E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            where=lambda e: e.activity_task_completed_event_attributes.scheduled_event_id == sid,
        )
        if started is None or closed is None:
            return None
        return scheduled, started, closed

    def local_activity(self, name: str, after: int = 0) -> HistoryEvent | None:
        """The marker of the first local activity ``name`` recorded after ``after``: it runs
        inside a workflow task and leaves only this."""
        for event in self.events[after:]:
            a = event.marker_recorded_event_attributes
            if event.event_type != E.EVENT_TYPE_MARKER_RECORDED or "data" not in a.details:
                continue
            if _payload(a.details["data"].payloads).get("activity_type") == name:
                return event
        return None

    def count(self, kind: EventType.ValueType) -> int:
        return sum(e.event_type == kind for e in self.events)


def _contains(payload: dict[str, object], expected: dict[str, object]) -> bool:
    return all(payload.get(k) == v for k, v in expected.items())


def _command_task_completed(command: HistoryEvent) -> int:
    for attributes in (
        command.signal_external_workflow_execution_initiated_event_attributes,
        command.activity_task_scheduled_event_attributes,
    ):
        if attributes.workflow_task_completed_event_id:
            return int(attributes.workflow_task_completed_event_id)
    raise LookupError(f"event {command.event_id} was not recorded by a workflow task")


def ms(start: HistoryEvent | datetime, end: HistoryEvent | datetime) -> float:
    a = History.time(start) if isinstance(start, HistoryEvent) else start
    b = History.time(end) if isinstance(end, HistoryEvent) else end
    return (b - a).total_seconds() * 1000


@dataclass
class Hop:
    name: str
    samples: list[float]
    summed: bool = True

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


class Profile:
    """Named phases in order, each with its samples (ms); printed as medians and shares."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.hops: dict[str, Hop] = {}

    def add(self, name: str, value: float, summed: bool = True) -> None:
        """One sample of phase ``name``; ``summed=False`` for a part of an earlier phase."""
        self.hops.setdefault(name, Hop(name, [], summed)).samples.append(value)

    def render(self) -> str:
        total = sum(h.median for h in self.hops.values() if h.summed) or 1.0
        n = max((len(h.samples) for h in self.hops.values()), default=0)
        lines = [f"{self.title} (median of {n}, server history timestamps)"]
        for hop in self.hops.values():
            share = hop.median / total * 100
            p90 = sorted(hop.samples)[int(0.9 * (len(hop.samples) - 1))] if hop.samples else 0
            lines.append(
                f"  {hop.name:58} {hop.median:8.1f} ms  {share:3.0f} %   p90 {p90:8.1f} ms"
            )
        lines.append(f"  {'sum of medians':58} {total:8.1f} ms")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            h.name: {
                "median_ms": round(h.median, 2),
                "p90_ms": round(sorted(h.samples)[int(0.9 * (len(h.samples) - 1))], 2)
                if h.samples
                else 0.0,
                "n": len(h.samples),
            }
            for h in self.hops.values()
        }


def signal_trip(
    profile: Profile,
    sender: History,
    sent: HistoryEvent,
    receiver: History,
    received: HistoryEvent,
    label: str,
) -> HistoryEvent:
    """Add one signal hop's phases; returns the receiver's task start that saw the signal."""
    profile.add(f"{label}: sent -> server records the signal", ms(sent, received))
    scheduled, started = receiver.task_after(received)
    profile.add(f"{label}: signal -> receiver's task scheduled", max(0.0, ms(received, scheduled)))
    profile.add(f"{label}: scheduled -> picked up by the worker", ms(scheduled, started))
    return started
