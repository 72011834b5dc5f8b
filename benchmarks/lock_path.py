"""The lock path: handoff, critical section, mutex throughput and the happy path's history.

``count`` processes of the project's worker are parked at approval, then approved at once, so
all of them queue at one mutex and run their commands one after another against the instant
downstream simulator (callbacks through the callbacks API over HTTP). From their histories:

- handoff: the releasing process's task start -> the next holder's task start that took the
  grant (both what ``workflow.now()`` says, as the process records ``released_at`` and
  ``granted_at``), against a bare signal round trip between two workflows measured the same way;
- critical section: grant -> release of one process, against a bare one-activity workflow
  (start -> result with the client, run one at a time);
- throughput: processes per minute from the approvals to the last completion, against the same
  one-activity workflows run one after another;
- history: events of each completed process.

Each is profiled hop by hop from the server's history timestamps (``benchmarks.timeline``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from benchmarks import processes
from benchmarks.cpu import CpuUse
from benchmarks.figures import Figure, percentile
from benchmarks.stack import Part
from benchmarks.timeline import History, Profile, ms, signal_trip
from workflows.messages import ProcessOptions, mutex_workflow_id

E = EventType


@dataclass
class LockPathResult:
    figures: list[Figure]
    profiles: list[Profile | CpuUse]
    completed: int
    expected: int


async def bare_round_trips(
    client: Client, baseline: Part, rounds: int
) -> tuple[list[float], Profile]:
    """Signal round trips between two bare workflows, and where their time goes."""
    queue = baseline.task_queue or ""
    echo_id, pinger_id = f"echo-{uuid.uuid4()}", f"pinger-{uuid.uuid4()}"
    echo = await client.start_workflow("Echo", id=echo_id, task_queue=queue)
    trips: list[float] = await client.execute_workflow(
        "Pinger", args=[echo_id, rounds], id=pinger_id, task_queue=queue, result_type=list[float]
    )
    await echo.signal("stop")
    await echo.result()
    pinger = History.of(await client.get_workflow_handle(pinger_id).fetch_history())
    echoes = History.of(await echo.fetch_history())
    profile = Profile("bare signal round trip (Pinger -> Echo -> Pinger)")
    pings = pinger.all(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
    pings_in = echoes.all(E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    pongs = echoes.all(E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED)
    pongs_in = pinger.all(E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    pings_in = [
        e for e in pings_in if e.workflow_execution_signaled_event_attributes.signal_name == "ping"
    ]
    for ping, ping_in, pong, pong_in in zip(pings, pings_in, pongs, pongs_in, strict=False):
        start = pinger.task_started_by(ping)
        profile.add("sender's task: start -> signal recorded", ms(start, ping))
        echo_task = signal_trip(profile, pinger, ping, echoes, ping_in, "hop 1")
        profile.add("receiver's task: start -> answer recorded", ms(echo_task, pong))
        signal_trip(profile, echoes, pong, pinger, pong_in, "hop 2")
    return trips, profile


async def one_activity_workflows(
    client: Client, baseline: Part, count: int
) -> tuple[list[float], float]:
    """Bare one-activity workflows, one after another: each one's latency (ms), and per minute."""
    latencies: list[float] = []
    began = time.perf_counter()
    for _ in range(count):
        started = time.perf_counter()
        await client.execute_workflow(
            "OneActivity", id=f"one-activity-{uuid.uuid4()}", task_queue=baseline.task_queue or ""
        )
        latencies.append((time.perf_counter() - started) * 1000)
    per_minute = count / (time.perf_counter() - began) * 60
    return latencies, per_minute


@dataclass
class Holder:
    process_id: str
    history: History
    request_id: str
    granted: History | None = None

    @property
    def grant_task(self):  # the task start that took the grant: ``granted_at``
        received = self.history.signal_received("lock_granted", request_id=self.request_id)
        assert received is not None
        return self.history.task_after(received)[1]

    @property
    def release(self):
        sent = self.history.signal_sent("release", request_id=self.request_id)
        assert sent is not None
        return sent


async def run(
    client: Client,
    worker: Part,
    baseline: Part,
    count: int,
    rounds: int,
    sequential: int,
    parts: list[Part],
) -> LockPathResult:
    trips, rtt_profile = await bare_round_trips(client, baseline, rounds)
    pids = {part.name: part.pid for part in parts}
    bare_cpu = CpuUse(
        "CPU of the baseline, one-activity workflows one after another", "workflow", pids
    )
    bare_cpu.start()
    one_activity, sequential_per_minute = await one_activity_workflows(client, baseline, sequential)
    bare_cpu.stop(len(one_activity))

    resource = f"bench-lock-path-{uuid.uuid4().hex[:8]}"
    options = ProcessOptions(lock_resource=resource)
    ids = await processes.park(client, worker.task_queue or "", count, options, "lock path")
    cpu = CpuUse(
        "CPU from the approvals to the last completion",
        "process through the lock",
        pids,
    )
    cpu.start()
    approved_at = time.perf_counter()
    await asyncio.gather(*(processes.decide(client, pid, processes.APPROVE) for pid in ids))
    outcomes = await asyncio.gather(
        *(client.get_workflow_handle(pid).result() for pid in ids), return_exceptions=True
    )
    wall = time.perf_counter() - approved_at
    completed = sum(not isinstance(o, BaseException) for o in outcomes)
    cpu.stop(completed)
    per_minute = completed / wall * 60

    holders = []
    for pid in ids:
        history = History.of(await client.get_workflow_handle(pid).fetch_history())
        granted = history.first(
            E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
            where=lambda e: (
                e.workflow_execution_signaled_event_attributes.signal_name == "lock_granted"
            ),
        )
        if granted is None:
            continue
        payload = granted.workflow_execution_signaled_event_attributes.input.payloads[0].data
        holders.append(Holder(pid, history, json.loads(payload)["request_id"]))
    holders.sort(key=lambda h: History.time(h.grant_task))
    mutex = History.of(
        await client.get_workflow_handle(mutex_workflow_id(resource)).fetch_history()
    )

    sections: list[float] = []
    section = Profile("critical section (grant -> release) of one process")
    for h in holders:
        sections.append(ms(h.grant_task, h.history.task_started_by(h.release)))
        _profile_section(section, h)
    # The tail on its own: where the slowest tenth (at least one) spent its time.
    slow = Profile("critical section, the slowest tenth of the processes")
    cut = sorted(sections)[-max(1, len(sections) // 10)]
    for h, took in zip(holders, sections, strict=True):
        if took >= cut:
            _profile_section(slow, h)

    handoffs: list[float] = []
    handoff = Profile("lock handoff (release -> mutex -> next holder)")
    for prev, nxt in itertools.pairwise(holders):
        released = prev.history.task_started_by(prev.release)
        handoffs.append(ms(released, nxt.grant_task))
        handoff.add("releasing task: start -> release recorded", ms(released, prev.release))
        release_in = mutex.signal_received("release", request_id=prev.request_id)
        grant_out = mutex.signal_sent("lock_granted", request_id=nxt.request_id)
        grant_in = nxt.history.signal_received("lock_granted", request_id=nxt.request_id)
        if release_in is None or grant_out is None or grant_in is None:
            continue
        mutex_task = signal_trip(handoff, prev.history, prev.release, mutex, release_in, "hop 1")
        handoff.add("mutex task: start -> grant recorded", ms(mutex_task, grant_out))
        signal_trip(handoff, mutex, grant_out, nxt.history, grant_in, "hop 2")

    finished = {
        pid for pid, o in zip(ids, outcomes, strict=True) if not isinstance(o, BaseException)
    }
    events = [float(len(h.history.events)) for h in holders if h.process_id in finished]
    rtt = percentile(trips, 50)
    one = percentile(one_activity, 50)
    figures = [
        Figure.of_samples(
            "handoff_vs_signal_rtt",
            handoffs,
            rtt,
            "ms",
            "<= 2",
            note=f"bare signal round trip p50 {rtt:.1f} ms over {len(trips)} trips" if rtt else "",
        ),
        Figure.of_samples(
            "critical_section_p50_vs_one_activity",
            sections,
            one,
            "ms",
            "<= 1.5",
            note=f"bare one-activity workflow p50 {one:.1f} ms over {len(one_activity)}"
            if one
            else "",
        ),
        Figure.of_samples(
            "critical_section_p90_vs_one_activity", sections, one, "ms", "<= 2", at=90
        ),
        Figure(
            "mutex_throughput_vs_sequential",
            per_minute,
            sequential_per_minute,
            "processes/min",
            ">= 0.5",
            n=completed,
            note=f"{count} approved at once, {completed} completed in {wall:.1f} s; "
            f"baseline: {sequential} one-activity workflows one after another",
        ),
        Figure.of_samples(
            "happy_path_history_events",
            events,
            None,
            "events",
            "<= 64",
            at=100,
            note="value: the longest history of the completed processes",
        ),
    ]
    return LockPathResult(
        figures, [rtt_profile, handoff, section, slow, bare_cpu, cpu], completed, count
    )


def _profile_section(profile: Profile, h: Holder) -> None:
    """Grant -> release of one process, in consecutive phases (their medians add up)."""
    history = h.history
    grant = h.grant_task
    one = history.activity("send_command_one", after=grant.event_id)
    two = history.activity("send_command_two", after=grant.event_id)
    callbacks = [
        e
        for e in history.all(E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        if e.workflow_execution_signaled_event_attributes.signal_name == "command_callback"
    ]
    if one is None or two is None or len(callbacks) < 2:
        return
    sends = min(one[0], two[0], key=History.time)
    local = history.local_activity("update_process_status", after=grant.event_id)
    status = history.activity("update_process_status", after=grant.event_id)
    if local is not None:  # the write runs inside the grant's task (patch process-local-writes)
        # One phase: the local activity's own times (the worker's) do not split it reliably.
        profile.add("grant task: in-progress write (local) and sends scheduled", ms(grant, sends))
    elif status is not None:  # before: an activity, and a workflow task after it
        scheduled, started, closed = status
        profile.add("grant task: start -> in-progress write scheduled", ms(grant, scheduled))
        profile.add("in-progress write: scheduled -> picked up", ms(scheduled, started))
        profile.add("in-progress write: runs (DynamoDB)", ms(started, closed))
        profile.add("write done -> sends scheduled (next workflow task)", ms(closed, sends))
    else:
        return
    picked = max(one[1], two[1], key=History.time)
    profile.add("sends: scheduled -> both picked up", ms(sends, picked))
    sent = max(one[2], two[2], key=History.time)
    answered = max(callbacks, key=History.time)
    last = max(sent, answered, key=History.time)
    profile.add("both sent and both callbacks in (simulator, API)", ms(picked, last))
    profile.add("  of which: slower send runs (SQS or HTTP)", ms(picked, sent), summed=False)
    profile.add("  of which: send one runs (SQS)", ms(one[1], one[2]), summed=False)
    profile.add("  of which: send two runs (HTTP)", ms(two[1], two[2]), summed=False)
    profile.add(
        "  of which: picked up -> second callback signalled", ms(picked, answered), summed=False
    )
    release_task = history.task_started_by(h.release)
    profile.add("last of those -> releasing task starts", ms(last, release_task))
