"""The parts of ``make run``, started in order and stopped in order.

Starts, in order, each once the previous ones are ready (readiness is polled against a
deadline, never guessed with a sleep):

1. the Temporal dev server with its Web UI (state in a SQLite file, ``ProcessStatus`` registered)
   and the AWS emulator (``moto_server``), side by side;
2. the AWS bootstrap (tables, topic, queue; idempotent), then the tables saved at the last stop;
3. the worker (unless ``LOCAL_STACK_WORKER=false``), the callbacks API and the approval inbox,
   side by side, and the downstream simulator once the API answers (it calls back through it).

Every start writes ``stack.env`` in the data folder: the settings a worker, API or CLI run
beside the stack needs (``. .data/stack.env``).

Stopping goes the other way: the services first, then the tables are saved, then the servers.
Watching the parts while they run is the supervisor's (``local_stack.supervisor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from temporalio.client import Client

from common.temporal import TemporalUnavailable, connect
from local_stack.children import Child, ChildFailed
from local_stack.dev_server import dynamic_config_args
from local_stack.environment import (
    SETTINGS_FILE,
    child_environment,
    shared_settings,
    signing_keys,
    temporal_server_environment,
    write_settings_file,
)
from local_stack.readiness import http_ok, temporal_ready, wait_until_ready, worker_polling
from local_stack.settings import LocalStackSettings
from local_stack.snapshot import import_snapshot
from local_stack.versioning import VersionNotSet, set_current_version, worker_version
from starter import StarterSettings
from workflows.messages import PROCESS_STATUS_ATTRIBUTE

SERVERS = frozenset({"temporal", "moto"})
# The emulator's DynamoDB writes, in the data folder (local_stack/aws_emulator.py).
DYNAMODB_JOURNAL = "dynamodb-journal.jsonl"
# Its queues and their messages, topics and subscriptions (local_stack/durable_messaging.py).
MESSAGING_JOURNAL = "messaging-journal.jsonl"
# How often the stack asks whether a worker run by hand polls yet (a describe of the task queue).
HAND_WORKER_POLL_INTERVAL = 1.0


class Stack:
    """Every part as a child process; ``on_start`` hears of each child as it starts."""

    def __init__(
        self,
        settings: LocalStackSettings,
        terminal: TextIO = sys.stdout,
        on_start: Callable[[Child], None] = lambda child: None,
    ) -> None:
        data_dir = settings.data_dir.resolve()
        self.settings = settings.model_copy(update={"data_dir": data_dir})
        self.terminal = terminal
        self.children: list[Child] = []
        self.client: Client | None = None
        self.app_settings: StarterSettings | None = None
        self._on_start = on_start
        self._env: dict[str, str] = {}

    def say(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"{'stack':<9}| {line}", file=self.terminal, flush=True)

    # -- starting ------------------------------------------------------------------------------

    async def up(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        keys = signing_keys(settings.data_dir)
        self._env = child_environment(settings, keys)
        write_settings_file(
            settings.data_dir, shared_settings({**self._env, **worker_version(self._env)})
        )
        # Our own view of the settings the children get, for the demo and the checks; the version
        # as they get it (our own environment may hold half of one).
        self.app_settings = StarterSettings(
            temporal_address=settings.temporal_address,
            temporal_tls=False,
            signing_keys=self._env["APPROVAL_SIGNING_KEYS"],
            callback_base_url=settings.url(settings.api_port),
            deployment_name=self._env["APPROVAL_DEPLOYMENT_NAME"],
            build_id=self._env["APPROVAL_BUILD_ID"],
        )
        namespace = self.app_settings.temporal_namespace
        python = str(settings.python)
        bin_dir = settings.bin_dir
        (settings.data_dir / "logs").mkdir(exist_ok=True)

        temporal = await self._start(
            "temporal",
            [
                str(bin_dir / "temporal"),
                "server",
                "start-dev",
                "--ip",
                settings.host,
                "--port",
                str(settings.temporal_port),
                "--ui-port",
                str(settings.ui_port),
                "--db-filename",
                str(settings.data_dir / "temporal.sqlite"),
                *(["--namespace", namespace] if namespace != "default" else []),
                "--search-attribute",
                f"{PROCESS_STATUS_ATTRIBUTE}=Keyword",
                "--ui-disable-news-fetch",
                "--log-level",
                "warn",
                *dynamic_config_args(),  # the server's pacing of cross-workflow hops, lifted
            ],
            env=temporal_server_environment(self._env),
        )
        moto = await self._start(
            "moto",
            [
                python,
                "-m",
                "local_stack.aws_emulator",
                "-H",
                settings.host,
                "-p",
                str(settings.moto_port),
                "--journal",
                str(settings.data_dir / DYNAMODB_JOURNAL),
                "--messaging-journal",
                str(settings.data_dir / MESSAGING_JOURNAL),
            ],
            echo=False,  # one line per request: see .data/logs/moto.log
        )
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await asyncio.gather(
                self._ready(temporal, self._connect_temporal),
                self._ready(
                    temporal, lambda: http_ok(http, settings.url(settings.ui_port)), "Temporal UI"
                ),
                self._ready(moto, lambda: http_ok(http, f"{settings.moto_url}/moto-api/", True)),
            )
            await self._run_once("aws-setup", [python, "-m", "common.aws_resources"])
            await self._import_snapshot()

            since = time.time()
            worker_env = {
                **self._env,
                "APPROVAL_METRICS_PORT": str(settings.metrics_port),
                **worker_version(self._env),
            }
            worker = None
            if settings.worker:
                worker = await self._start("worker", [python, "-m", "worker"], env=worker_env)
            else:
                self.say(f"no worker of its own (LOCAL_STACK_WORKER=false): {self.worker_command}")
            api = await self._start("api", [python, "-m", "callbacks_api"])
            inbox = await self._start("inbox", [python, "-m", "simulator.inbox"])
            client = self.client
            assert client is not None
            task_queue = self.app_settings.task_queue

            async def api_then_simulator() -> None:
                await self._ready(
                    api, lambda: http_ok(http, settings.url(settings.api_port, "/readyz"))
                )
                # The simulator resumes unfinished work at once, and each piece ends in a
                # callback through the API: started before the API answers, its first tries
                # met a closed port ("callback ... failed (ClientConnectorError ...)").
                simulator = await self._start("simulator", [python, "-m", "simulator"])
                await self._ready(
                    simulator,
                    lambda: http_ok(http, settings.url(settings.simulator_port, "/healthz")),
                )

            checks = [
                api_then_simulator(),
                self._ready(
                    inbox, lambda: http_ok(http, settings.url(settings.inbox_port, "/healthz"))
                ),
            ]
            if worker is not None:
                checks.append(
                    self._ready(worker, lambda: worker_polling(client, task_queue, since))
                )
            await _all(*checks)
            if worker is not None:
                await self._make_current(worker, worker_env)

    @property
    def settings_file(self) -> Path:
        return self.settings.data_dir / SETTINGS_FILE

    @property
    def worker_command(self) -> str:
        """How to run a worker by hand against this stack, as docs/operations.md says."""
        return f". {shlex.quote(str(self.settings_file))} && .venv/bin/python -m worker"

    async def make_current_once_polled(self) -> None:
        """Without a worker of its own: make the build in stack.env current once a worker polls.

        What ``up`` does for its own worker, for the operator's: until a version is current
        (a fresh data folder), the server gives new processes to unversioned workers only.
        """
        assert self.client is not None and self.app_settings is not None
        client, task_queue = self.client, self.app_settings.task_queue
        since = time.time()
        while True:
            with contextlib.suppress(Exception):  # Temporal busy: ask again
                if await worker_polling(client, task_queue, since):
                    break
            await asyncio.sleep(HAND_WORKER_POLL_INTERVAL)
        try:
            await self._set_current(worker_version(self._env))
        except VersionNotSet as err:  # e.g. a worker of another build: the operator's to decide
            self.say(str(err))

    async def _make_current(self, worker: Child, env: dict[str, str]) -> None:
        """Make the worker's build current, as docs/upgrades.md has operators do it."""
        try:
            await self._set_current(env)
        except VersionNotSet as err:
            raise ChildFailed(worker, str(err)) from None

    async def _set_current(self, version: dict[str, str]) -> None:
        """Make the build ``version`` names current (``temporal worker deployment
        set-current-version``) and say so; ``VersionNotSet`` if it cannot be in time."""
        assert self.app_settings is not None
        deployment, build_id = version["APPROVAL_DEPLOYMENT_NAME"], version["APPROVAL_BUILD_ID"]
        took = await set_current_version(
            self.settings.bin_dir / "temporal",
            self.settings.temporal_address,
            self.app_settings.temporal_namespace,
            deployment,
            build_id,
            self.settings.ready_timeout,
            env=self._env,
        )
        self.say(f"worker build {build_id} of deployment {deployment} is current ({took:.1f} s)")

    async def _import_snapshot(self) -> None:
        assert self.app_settings is not None
        loaded = await asyncio.to_thread(
            import_snapshot,
            self.settings.moto_url,
            (self._env["AWS_ACCESS_KEY_ID"], self._env["AWS_SECRET_ACCESS_KEY"]),
            [self.app_settings.process_table, self.app_settings.idempotency_table],
            self.settings.data_dir,
        )
        if loaded:
            self.say(f"imported {loaded} table items from the snapshot of an earlier version")

    async def _connect_temporal(self) -> bool:
        if self.client is None:
            assert self.app_settings is not None
            try:
                self.client = await connect(self.app_settings)
            except TemporalUnavailable:
                return False
        try:
            return await temporal_ready(self.client)
        except Exception:
            return False

    async def _start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, echo: bool = True
    ) -> Child:
        child = Child(
            name,
            argv,
            env or self._env,
            self.settings.data_dir / "logs" / f"{name}.log",
            self.terminal,
            echo=echo,
        )
        await child.start()
        self.children.append(child)
        self._on_start(child)
        return child

    async def _run_once(self, name: str, argv: list[str]) -> None:
        child = Child(
            name, argv, self._env, self.settings.data_dir / "logs" / f"{name}.log", self.terminal
        )
        started = time.monotonic()
        await child.start()
        try:
            code = await asyncio.wait_for(child.exited(), self.settings.ready_timeout)
        except TimeoutError:
            await child.stop(self.settings.stop_timeout)
            raise ChildFailed(
                child, f"{name} did not finish within {self.settings.ready_timeout:g} s"
            ) from None
        if code != 0:
            raise ChildFailed(child, f"{name} failed with exit code {code}")
        self.say(f"{name} done ({time.monotonic() - started:.1f} s)")

    async def _ready(
        self, child: Child, check: Callable[[], Awaitable[bool]], what: str | None = None
    ) -> None:
        what = what or child.name
        took = await wait_until_ready(child, check, what, self.settings.ready_timeout)
        self.say(f"{what} ready (pid {child.pid}, {took:.1f} s)")

    # -- stopping ------------------------------------------------------------------------------

    async def down(self, kill: bool = False) -> None:
        """Stop the services before the servers they talk to; each group side by side."""
        clients = [c for c in self.children if c.name not in SERVERS]
        backends = [c for c in self.children if c.name in SERVERS]
        await self._stop_all(clients, kill)
        await self._stop_all(backends, kill)

    async def _stop_all(self, children: Iterable[Child], kill: bool) -> None:
        async def stop(child: Child) -> None:
            if child.returncode is not None:
                return
            started = time.monotonic()
            code: int | None
            if kill:
                child.kill()
                code = await child.exited()
            else:
                code = await child.stop(self.settings.stop_timeout)
            took = time.monotonic() - started
            self.say(f"{child.name} stopped (exit {code}, {took:.1f} s)")

        await asyncio.gather(*(stop(c) for c in children))

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()


async def _all(*checks: Awaitable[Any]) -> None:
    """Await them side by side; the first failure cancels the rest (none starts a part late)."""
    tasks = [asyncio.ensure_future(check) for check in checks]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
