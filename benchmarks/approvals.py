"""Approvals: the callbacks API's POST against a bare client giving the same guarantee.

``n`` parked processes are approved at once through ``POST /approvals/{token}`` over real HTTP
(the form the page shows; redirects followed, as a browser does), and ``n`` others at once with
the Temporal client: ``approval_decision`` signal, then one ``state`` query, the least a client
needs to know its decision was recorded. The client goes first; what its approvals set off
settles before the API's are sent. Their lock is held by someone else, so approved processes
wait at the mutex and the figure measures the approval path only.

An answer is definitive when it says what became of the decision: 200 (recorded), 409 (another
decision won) or 410 (closed). 202 only says "sent". Every acknowledged approval (200 or 202, a
returned signal) must show in the process's state at the end, or it was lost.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

import aiohttp
from temporalio.client import Client

from benchmarks import processes
from benchmarks.figures import Figure, percentile
from callbacks_api.approvals import form_check
from common.settings import Settings
from common.tokens import Purpose
from workflows.messages import APPROVAL_CALLBACK

DEFINITIVE = frozenset({200, 409, 410})
DELIVERED = frozenset({200, 202})


@dataclass
class Timed:
    latencies: list[float]
    outcomes: Counter[str]
    wall: float

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


async def at_once(calls: Sequence[Callable[[], Awaitable[object]]]) -> Timed:
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        started = time.perf_counter()
        try:
            outcome = str(await call())
        except Exception as err:
            outcome = f"error {type(err).__name__}"
        latencies.append((time.perf_counter() - started) * 1000)
        outcomes[outcome] += 1

    began = time.perf_counter()
    await asyncio.gather(*(one(call) for call in calls))
    return Timed(latencies, outcomes, time.perf_counter() - began)


@dataclass
class ApprovalResult:
    figures: list[Figure]
    acknowledged: int
    lost: int


async def run(
    client: Client,
    settings: Settings,
    api_url: str,
    via_api: list[str],
    direct: list[str],
    mutex_id: str,
) -> ApprovalResult:
    """``mutex_id``: the held lock's mutex, where every approved process queues."""
    key = settings.signing_keys[0]
    tokens: dict[str, str] = {}
    for pid in via_api:
        state = await processes.state(client, pid)
        assert state.approval.deadline is not None
        # Exactly as the publish activity signs the mail's link.
        tokens[pid] = settings.signer.sign(
            pid, APPROVAL_CALLBACK, Purpose.APPROVAL, state.approval.deadline
        )
    answers: dict[str, int] = {}
    signalled: list[str] = []

    async def bare(pid: str) -> str:
        await processes.decide(client, pid, processes.APPROVE)
        signalled.append(pid)
        state = await processes.state(client, pid)
        return "recorded" if state.approval.decision == "approved" else "sent"

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as http:

        async def post(pid: str) -> int:
            form = {
                "check": form_check(key.secret, tokens[pid]),
                "decision": "approve",
                "name": "bench",
            }
            async with http.post(f"{api_url}/approvals/{tokens[pid]}", data=form) as response:
                await response.read()
                answers[pid] = response.status
                return response.status

        direct_timed = await at_once([partial(bare, pid) for pid in direct])
        # What the first approvals set off (lock requests, the mutex queueing them) settles
        # before the second path is measured.
        await processes.wait_idle(client, [*direct, mutex_id])
        api_timed = await at_once([partial(post, pid) for pid in via_api])
        await processes.wait_idle(client, [*via_api, mutex_id])

    acknowledged = [pid for pid in via_api if answers.get(pid) in DELIVERED] + signalled
    states = await processes.bounded(
        [partial(processes.state, client, pid) for pid in acknowledged], processes.START_CONCURRENCY
    )
    lost = sum(s.approval.decision != "approved" for s in states)
    definitive = sum(status in DEFINITIVE for status in answers.values())
    n = len(via_api)
    figures = [
        Figure(
            "approval_post_vs_bare_client",
            api_timed.per_second,
            direct_timed.per_second,
            "approvals/s",
            ">= 0.7",
            n=n,
            p50=_p(api_timed, 50),
            p90=_p(api_timed, 90),
            p99=_p(api_timed, 99),
            note=f"{n} at once each; API answers {dict(sorted(api_timed.outcomes.items()))}; "
            f"bare client (signal + one state query) p50 {_p(direct_timed, 50):.0f} ms, "
            f"p99 {_p(direct_timed, 99):.0f} ms; p50/p90/p99 in ms",
        ),
        Figure(
            "approval_definitive_fraction",
            definitive / n if n else 0.0,
            None,
            "fraction",
            ">= 0.95",
            n=n,
            note="answers saying recorded (200), beaten (409) or closed (410), not just sent (202)",
        ),
    ]
    return ApprovalResult(figures, len(acknowledged), lost)


def _p(timed: Timed, p: int) -> float:
    return percentile(timed.latencies, p) or 0.0
