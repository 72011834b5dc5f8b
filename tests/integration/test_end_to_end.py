"""End to end over the wire: ``python -m local_stack`` with every part as a real process.

The dev server, the AWS emulator, the worker, the callbacks API, the downstream simulator and the
inbox run exactly as ``make run`` starts them (on free ports, in a temporary data folder). A
process is started through the CLI, its approval link read from the inbox, the confirmation page
opened and the approval posted over HTTP; the simulator's callbacks finish the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError

from local_stack.children import Child
from tests.support.cli import run_cli
from tests.support.moto_server import free_loopback_port
from tests.support.processes import alive
from tests.support.waiting import eventually
from workflows.messages import ProcessState

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 120.0
FLOW_TIMEOUT = 60.0
PORTS = ("TEMPORAL", "UI", "MOTO", "API", "SIMULATOR", "INBOX", "METRICS")
# Our own settings must not leak in from the environment the tests run in.
OWN_PREFIXES = ("APPROVAL_", "SIMULATOR_", "INBOX_", "LOCAL_STACK_", "TEMPORAL_", "AWS_")


@dataclass
class RunningStack:
    child: Child
    data_dir: Path
    ports: dict[str, int]
    env: dict[str, str]
    stopped_with: int | None = None

    def url(self, name: str, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    @property
    def output(self) -> str:
        return self.child.log_path.read_text(errors="replace")

    def cli_env(self) -> dict[str, str]:
        return {
            **self.env,
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.ports['TEMPORAL']}",
            "APPROVAL_INBOX_URL": self.url("INBOX"),
        }

    async def client(self) -> Client:
        return await Client.connect(
            f"127.0.0.1:{self.ports['TEMPORAL']}", data_converter=pydantic_data_converter
        )

    def table_item(self, process_id: str) -> dict[str, Any]:
        dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=self.url("MOTO"),
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        item = dynamodb.get_item(
            TableName="approval-processes",
            Key={"process_id": {"S": process_id}},
            ConsistentRead=True,
        ).get("Item")
        assert item is not None, f"no record for {process_id}"
        return {name: value.get("S") for name, value in item.items()}

    async def start(self) -> None:
        """Start the supervisor and wait for its banner."""
        await self.child.start()

        def ready() -> bool:
            if self.child.returncode is not None:
                pytest.fail(f"local_stack exited with {self.child.returncode}:\n{self.output}")
            return "Ready in" in self.output

        await eventually(ready, "local_stack ready", READY_TIMEOUT)

    def part_pid(self, name: str) -> int:
        found = re.search(rf"{name} ready \(pid (\d+),", self.output)
        assert found, self.output
        return int(found.group(1))

    def queued_commands(self) -> int:
        """Command-one messages in the emulator's queue, taken (in flight) or not."""
        sqs = boto3.client(
            "sqs",
            endpoint_url=self.url("MOTO"),
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        queue = sqs.get_queue_url(QueueName="approval-command-one")["QueueUrl"]
        counts = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        return int(counts["ApproximateNumberOfMessages"]) + int(
            counts["ApproximateNumberOfMessagesNotVisible"]
        )

    async def kill_9(self, *frozen: int) -> None:
        """kill -9 the supervisor alone, then wait until its parts are gone (they die with it).

        ``frozen``: parts stopped with SIGSTOP, killed here too: a stopped process would hold
        the SIGTERM of its parent's death forever.
        """
        parts = [int(pid) for pid in re.findall(r" ready \(pid (\d+),", self.output)]
        assert parts, self.output
        self.child.kill()
        await self.child.exited()
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        await eventually(lambda: not any(map(alive, parts)), "the parts gone", READY_TIMEOUT)

    async def start_again(self, **settings: str) -> None:
        """Start the supervisor again, on the same ports and data folder."""
        self.env = {**self.env, **settings}
        output = self.child.log_path.with_suffix(".again.out")
        self.child = _supervisor(self.env, output)
        self.stopped_with = None
        await self.start()

    async def stop(self) -> int:
        """SIGINT, as Ctrl+C would; the supervisor's exit code."""
        if self.stopped_with is None:
            self.child.stopping = True
            if self.child.returncode is None and self.child.pid is not None:
                os.kill(self.child.pid, signal.SIGINT)
            try:
                self.stopped_with = await asyncio.wait_for(self.child.exited(), 60)
            except TimeoutError:
                self.child.kill()
                self.stopped_with = await self.child.exited()
        return self.stopped_with


@asynccontextmanager
async def local_stack(tmp_path: Path, **settings: str) -> AsyncIterator[RunningStack]:
    """``python -m local_stack`` on free ports; stopped (and its children with it) at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    ports = {name: free_loopback_port() for name in PORTS}
    data_dir = tmp_path / "data"
    env.update({f"LOCAL_STACK_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(
        {
            "LOCAL_STACK_DATA_DIR": str(data_dir),
            "LOCAL_STACK_READY_TIMEOUT": "90",
            "PYTHONUNBUFFERED": "1",
            # Quick downstream systems keep the test short.
            "SIMULATOR_MIN_DELAY": "0.1",
            "SIMULATOR_MAX_DELAY": "0.3",
        }
    )
    env.update(settings)
    stack = RunningStack(
        child=_supervisor(env, tmp_path / "local_stack.out"),
        data_dir=data_dir,
        ports=ports,
        env=env,
    )
    try:
        await stack.start()
        yield stack
    except BaseException:
        print(stack.output, file=sys.stderr)  # shown by pytest for the failing test
        raise
    finally:
        await stack.stop()


def _supervisor(env: dict[str, str], output: Path) -> Child:
    return Child(
        "local_stack", [sys.executable, "-m", "local_stack"], env, output, sys.stderr, echo=False
    )


async def cli(stack: RunningStack, *args: str) -> tuple[int, str, str]:
    return await run_cli(stack.cli_env(), *args, within=FLOW_TIMEOUT)


async def start_through_cli(stack: RunningStack, description: str, *options: str) -> dict[str, Any]:
    code, out, err = await cli(
        stack, "start", "--requested-by", "e2e", "--description", description, "--json", *options
    )
    assert code == 0, err
    started: dict[str, Any] = json.loads(out)
    assert started["process_id"].startswith("process-")
    return started


async def approve(http: aiohttp.ClientSession, stack: RunningStack, process_id: str) -> None:
    """Read the link from the inbox, open the page (changes nothing), then post the approval."""
    async with http.get(
        stack.url("INBOX", "/messages.json"), params={"process_id": process_id}
    ) as r:
        messages = (await r.json())["messages"]
    assert len(messages) == 1
    link = messages[0]["approve_url"]
    assert link.startswith(stack.url("API", "/approvals/"))

    async with http.get(link) as page:
        assert page.status == 200
        html = await page.text()
    assert process_id in html
    client = await stack.client()
    state = await client.get_workflow_handle(process_id).query("state", result_type=ProcessState)
    assert state.stage == "awaiting-approval" and state.approval.decision is None

    form: dict[str, str] = {"decision": "approve", "name": "e2e approver"}
    check = re.search(r'name="check" value="([^"]*)"', html)
    if check:
        form["check"] = check.group(1)
    async with http.post(link, data=form) as answer:
        assert answer.status == 200, await answer.text()


@pytest.mark.duration(25)
async def test_approved_process_completes(tmp_path: Path) -> None:
    # Commands that take a few seconds, so the kill -9 below lands while they are worked on.
    slow = {"SIMULATOR_MIN_DELAY": "2.5", "SIMULATOR_MAX_DELAY": "3"}
    # A send cut off by the kill is tried again after 1 s, not the original's 5 min.
    slow["APPROVAL_PROCESS__HTTP_RETRY__DELAY"] = "PT1S"
    # The third process's command two hangs on the frozen simulator when the kill lands; the
    # server sends it again once its heartbeat is overdue. 10 s rather than 30 s: the restart
    # itself takes about that long, so the process no longer waits ~20 s more after it.
    slow["APPROVAL_PROCESS__SEND_HEARTBEAT_TIMEOUT"] = "PT10S"
    async with local_stack(tmp_path, **slow) as stack, aiohttp.ClientSession() as http:
        # What make run promises on its last lines, and the UI behind the first one.
        output = stack.output
        ui = re.search(r"^Temporal UI: (\S+)$", output, re.MULTILINE)
        assert ui and re.search(r"^Inbox: http://\S+$", output, re.MULTILINE)
        assert re.search(r"^Approval link: http://\S+/approvals/\S+$", output, re.MULTILINE)
        async with http.get(ui.group(1)) as page:
            assert page.status == 200

        started = await start_through_cli(stack, "end-to-end happy path")
        process_id = started["process_id"]
        assert started["approval_link"], "start printed no approval link"
        await approve(http, stack, process_id)

        client = await stack.client()
        handle = client.get_workflow_handle(process_id)
        result = await asyncio.wait_for(handle.result(), FLOW_TIMEOUT)
        assert result["status"] == "success"
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        record = stack.table_item(process_id)
        assert record["status"] == "completed"
        assert record["approved_by"] == "e2e approver"

        # The simulator ran each command once and its callbacks were accepted.
        async with http.get(stack.url("SIMULATOR", "/commands")) as response:
            commands = [
                c for c in (await response.json())["commands"] if c["process_id"] == process_id
            ]
        assert sorted(c["command"] for c in commands) == ["command-one", "command-two"]
        assert all(c["outcome"] == "succeeded" and c["callback_status"] == 202 for c in commands)

        code, out, err = await cli(stack, "status", process_id, "--json")
        assert code == 0, err
        assert json.loads(out)["state"]["status"] == "completed"
        code, out, err = await cli(stack, "list", "--status", "completed", "--json")
        assert code == 0, err
        assert process_id in [p["process_id"] for p in json.loads(out)["processes"]]
        code, out, err = await cli(stack, "lock", "--resource", "approval-commands", "--json")
        assert code == 0, err
        assert json.loads(out)["state"]["holder"] is None
        # make run's worker is build "local": the process stayed pinned to it, the mutex
        # auto-upgrades, and both histories replay on the code on disk.
        code, out, err = await cli(stack, "replay", "--json")
        assert code == 0, err
        replayed = {h["workflow_id"]: h for h in json.loads(out)["histories"]}
        assert replayed[process_id]["versioning"] == "pinned approval-flow:local"
        assert (
            replayed["mutex-approval-commands"]["versioning"] == "auto-upgrade approval-flow:local"
        )
        assert all(h["replays"] for h in replayed.values())

        # Errors are one line on stderr and an exit code, never a traceback.
        code, out, err = await cli(stack, "status", "process-does-not-exist")
        assert (code, out) == (1, "")
        assert err.strip() == "approval-flow: no process with id process-does-not-exist"

        # kill -9 of make run while a process waits on both commands loses nothing: started
        # again on the same data, the stack finishes it (the simulator resumes its journaled
        # work; the emulator's journal kept every record).
        second = (await start_through_cli(stack, "across a kill -9"))["process_id"]
        await approve(http, stack, second)

        async def commands_of_second() -> list[dict[str, Any]]:
            async with http.get(stack.url("SIMULATOR", "/commands")) as response:
                listed = (await response.json())["commands"]
            return [c for c in listed if c["process_id"] == second]

        async def both_sent() -> bool:
            return len(await commands_of_second()) == 2

        await eventually(both_sent, "both commands of the second process sent", FLOW_TIMEOUT)
        assert {c["outcome"] for c in await commands_of_second()} == {"pending"}

        # A third process, on a lock of its own, whose command one nobody has taken at the kill:
        # the simulator is frozen. The emulator's messaging journal keeps it (issue 8 §2).
        simulator = stack.part_pid("simulator")
        os.kill(simulator, signal.SIGSTOP)
        third = (await start_through_cli(stack, "queued at the kill", "--resource", "e2e-queued"))[
            "process_id"
        ]
        await approve(http, stack, third)
        await eventually(
            lambda: stack.queued_commands() == 1, "the third's command one queued", FLOW_TIMEOUT
        )
        first_output = stack.output
        demo = re.search(r"demo process (\S+) started", first_output)
        link = re.search(r"^Approval link: (\S+)$", first_output, re.MULTILINE)
        assert demo and link
        simulator_log = stack.data_dir / "logs" / "simulator.log"
        before_restart = simulator_log.stat().st_size
        await stack.kill_9(simulator)
        restarted = time.monotonic()
        await stack.start_again()
        ready = time.monotonic()
        # The demo still waits for its approval: no second one, the same link again.
        again = stack.output
        assert "started" not in re.findall(r"demo process \S+ (\S+)", again)
        assert f"demo process {demo.group(1)} (from an earlier start) still waits" in again
        assert f"Approval link: {link.group(1)}" in again
        client = await stack.client()
        result = await asyncio.wait_for(client.get_workflow_handle(second).result(), FLOW_TIMEOUT)
        done = time.monotonic()
        print(
            f"restart: ready in {ready - restarted:.1f} s; the process completed "
            f"{done - restarted:.1f} s after the restart began ({done - ready:.1f} s after ready)"
        )
        assert result["status"] == "success"
        assert stack.table_item(second)["status"] == "completed"
        result = await asyncio.wait_for(client.get_workflow_handle(third).result(), FLOW_TIMEOUT)
        print(
            f"the queued command's process completed {time.monotonic() - ready:.1f} s after ready"
        )
        assert result["status"] == "success"
        assert stack.table_item(third)["status"] == "completed"
        assert stack.table_item(process_id)["status"] == "completed"  # written before the kill
        # The simulator started once the API answered: its resumed callbacks met no closed port.
        with simulator_log.open("rb") as log:
            log.seek(before_restart)
            after_restart = log.read().decode(errors="replace")
        assert "callback for command-two answered 202" in after_restart
        assert "ClientConnectorError" not in after_restart

        assert await stack.stop() == 0
        assert "stack    | stopped" in stack.output
        code, out, err = await cli(stack, "list")
        assert code == 3 and out == ""
        assert len(err.strip().splitlines()) == 1 and "cannot reach Temporal" in err


@pytest.mark.duration(9)
async def test_failed_command_fails_the_process(tmp_path: Path) -> None:
    # With tracing on, printing spans: every part and the CLI read OTEL_*, the Temporal dev server
    # must not (it refuses "console"), and the CLI's --json must stay parseable (spans on stderr).
    traced = {"OTEL_TRACES_EXPORTER": "console"}
    async with (
        local_stack(
            tmp_path, SIMULATOR_FAILURE_RATE="1", LOCAL_STACK_DEMO="false", **traced
        ) as stack,
        aiohttp.ClientSession() as http,
    ):
        assert "Approval link:" not in stack.output
        started = await start_through_cli(stack, "end-to-end failure path")
        process_id = started["process_id"]
        await approve(http, stack, process_id)

        client = await stack.client()
        handle = client.get_workflow_handle(process_id)
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), FLOW_TIMEOUT)
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "command-failed"
        assert (await handle.describe()).status == WorkflowExecutionStatus.FAILED
        record = stack.table_item(process_id)
        assert record["status"] == "failed"
        assert record["reason"] == "command-failed"

        code, out, err = await cli(stack, "status", process_id, "--json")
        assert code == 0, err
        state = json.loads(out)["state"]
        assert state["status"] == "failed" and state["failure_reason"] == "command-failed"

        # A part that dies is named, the rest are stopped, and the supervisor exits non-zero.
        pid = re.search(r"simulator ready \(pid (\d+),", stack.output)
        assert pid is not None
        os.kill(int(pid.group(1)), signal.SIGKILL)
        assert await asyncio.wait_for(stack.child.exited(), FLOW_TIMEOUT) == 1
        output = stack.output
        assert "make run: simulator exited with code -9; stopping the rest." in output
        assert "worker stopped (exit 0" in output and "temporal stopped (exit 0" in output
        # The worker flushed its spans as it stopped: the process's are in its log.
        worker_log = (stack.data_dir / "logs" / "worker.log").read_text()
        assert f'"temporalWorkflowID": "{process_id}"' in worker_log
