"""``make run``: the whole system on this machine, as child processes under one supervisor.

Starts, in order, each once the previous ones are ready (readiness is polled against a
deadline, never guessed with a sleep):

1. the Temporal dev server with its Web UI (state in a SQLite file, ``ProcessStatus`` registered)
   and the AWS emulator (``moto_server``), side by side;
2. the AWS bootstrap (tables, topic, queue; idempotent);
3. the worker, the callbacks API, the downstream simulator and the approval inbox, side by side;

then starts one demo process and prints where to look. Ctrl+C or SIGTERM stops every child
(SIGTERM, a deadline, then SIGKILL; a second Ctrl+C kills at once). If a child dies, the
supervisor says which, stops the rest and exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
import boto3
from pydantic import ValidationError
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from common.temporal import TemporalUnavailable, connect
from local_stack.children import Child, ChildFailed
from local_stack.settings import REGION, LocalStackSettings
from local_stack.snapshot import load_tables, save_tables
from starter import StarterSettings, start_process, wait_for_approval_link
from workflows.messages import PROCESS_STATUS_ATTRIBUTE

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

POLL_INTERVAL = 0.1
SIGNING_KEY_FILE = "signing-keys"
SIGNING_SECRET_BYTES = 48  # URL-safe text of 64 characters; the tokens need at least 32 bytes


class StackError(Exception):
    """The stack cannot start; the message is one line for the terminal."""


# -- before anything starts ---------------------------------------------------------------------


def check_ports(settings: LocalStackSettings) -> None:
    """Refuse to start when a port is taken or given twice: one clear line, no traceback."""
    seen: dict[int, str] = {}
    for port, _what, setting in settings.ports():
        if port in seen:
            raise StackError(f"{seen[port]} and {setting} are both set to port {port}")
        seen[port] = setting
    for port, what, setting in settings.ports():
        if not port_is_free(settings.host, port):
            raise StackError(
                f"port {port} ({what}) is already in use; set {setting} to another port "
                "or stop what is using it"
            )


def port_is_free(host: str, port: int) -> bool:
    """True when a server could listen on ``host:port`` now (as the servers here do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a socket lingering in TIME_WAIT does not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise StackError(f"cannot use {host}:{port}: {err.strerror}") from err
    return True


def signing_keys(data_dir: Path) -> str:
    """The key that signs approval links, made on the first run and kept in the data folder.

    Kept so the links already mailed still verify after a restart.
    """
    path = data_dir / SIGNING_KEY_FILE
    if path.exists():
        keys = path.read_text().strip()
        if keys:
            return keys
    kid = "local-" + datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    keys = f"{kid}:{secrets.token_urlsafe(SIGNING_SECRET_BYTES)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(keys + "\n")
    return keys


def child_environment(
    settings: LocalStackSettings, keys: str, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment every child shares: the user's, with the stack's addresses on top.

    Everything that says where a part of the stack is, is the stack's to decide; anything else
    (table names, the task queue, ``APPROVAL_LOG_JSON``, ``SIMULATOR_FAILURE_RATE``) passes
    through from the user's environment.
    """
    env = dict(os.environ if base is None else base)
    # Nothing here may reach real AWS or a Temporal elsewhere.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "TEMPORAL_API_KEY"):
        env.pop(name, None)
    data = settings.data_dir
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "TEMPORAL_TLS": "false",
            "AWS_ENDPOINT_URL": settings.moto_url,
            "AWS_ACCESS_KEY_ID": "local-stack",
            "AWS_SECRET_ACCESS_KEY": "local-stack",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "APPROVAL_COMMAND_QUEUE_URL": settings.command_queue_url,
            "APPROVAL_COMMAND_URL": settings.command_url,
            "APPROVAL_CALLBACK_BASE_URL": settings.url(settings.api_port),
            "APPROVAL_API_HOST": settings.host,
            "APPROVAL_API_PORT": str(settings.api_port),
            "APPROVAL_INBOX_URL": settings.url(settings.inbox_port),
            "SIMULATOR_HOST": settings.host,
            "SIMULATOR_PORT": str(settings.simulator_port),
            "SIMULATOR_COMMAND_PATH": "/commands/two",
            "SIMULATOR_STATE_PATH": str(data / "simulator-keys.jsonl"),
            "INBOX_HOST": settings.host,
            "INBOX_PORT": str(settings.inbox_port),
            "INBOX_STORE_PATH": str(data / "inbox.jsonl"),
        }
    )
    # The API serves its metrics on its own port; only the worker opens APPROVAL_METRICS_PORT.
    env.pop("APPROVAL_METRICS_PORT", None)
    env.setdefault("APPROVAL_SIGNING_KEYS", keys)
    return env


# -- readiness checks ---------------------------------------------------------------------------


async def http_ok(http: aiohttp.ClientSession, url: str, any_status: bool = False) -> bool:
    try:
        async with http.get(url) as response:
            return any_status or response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def temporal_ready(client: Client) -> bool:
    """The namespace answers and the search attribute is registered."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return PROCESS_STATUS_ATTRIBUTE in response.custom_attributes


async def worker_polling(client: Client, task_queue: str, since: float) -> bool:
    """A worker polls the task queue (a poller seen after ``since``, not one from a past run)."""
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return any(p.last_access_time.ToSeconds() >= int(since) for p in response.pollers)


# -- the supervisor -----------------------------------------------------------------------------


class Stack:
    def __init__(self, settings: LocalStackSettings, terminal: TextIO = sys.stdout) -> None:
        data_dir = settings.data_dir.resolve()
        self.settings = settings.model_copy(update={"data_dir": data_dir})
        self.terminal = terminal
        self.children: list[Child] = []
        self.client: Client | None = None
        self.app_settings: StarterSettings | None = None
        self._died: asyncio.Future[Child] = asyncio.get_running_loop().create_future()
        self._watchers: list[asyncio.Task[None]] = []
        self._started_at = time.monotonic()
        self._env: dict[str, str] = {}
        self._tables_loaded = False

    def say(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(line, file=self.terminal, flush=True)

    @property
    def died(self) -> asyncio.Future[Child]:
        """Resolves with the first child that exits without being asked to."""
        return self._died

    # -- starting ------------------------------------------------------------------------------

    async def up(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        keys = signing_keys(settings.data_dir)
        self._env = child_environment(settings, keys)
        # Our own view of the settings the children get, for the demo and the checks.
        self.app_settings = StarterSettings(
            temporal_address=settings.temporal_address,
            temporal_tls=False,
            signing_keys=self._env["APPROVAL_SIGNING_KEYS"],
            callback_base_url=settings.url(settings.api_port),
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
            ],
        )
        moto = await self._start(
            "moto",
            [str(bin_dir / "moto_server"), "-H", settings.host, "-p", str(settings.moto_port)],
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
            await self._load_tables()

            since = time.time()
            worker_env = {**self._env, "APPROVAL_METRICS_PORT": str(settings.metrics_port)}
            worker = await self._start("worker", [python, "-m", "worker"], env=worker_env)
            api = await self._start("api", [python, "-m", "callbacks_api"])
            simulator = await self._start("simulator", [python, "-m", "simulator"])
            inbox = await self._start("inbox", [python, "-m", "simulator.inbox"])
            client = self.client
            assert client is not None
            task_queue = self.app_settings.task_queue
            await asyncio.gather(
                self._ready(worker, lambda: worker_polling(client, task_queue, since)),
                self._ready(api, lambda: http_ok(http, settings.url(settings.api_port, "/readyz"))),
                self._ready(
                    simulator,
                    lambda: http_ok(http, settings.url(settings.simulator_port, "/healthz")),
                ),
                self._ready(
                    inbox, lambda: http_ok(http, settings.url(settings.inbox_port, "/healthz"))
                ),
            )

    def _tables(self) -> tuple[DynamoDBClient, list[str]]:
        assert self.app_settings is not None
        settings = self.app_settings
        dynamodb = boto3.session.Session().client(
            "dynamodb",
            endpoint_url=self.settings.moto_url,
            region_name=REGION,
            aws_access_key_id=self._env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self._env["AWS_SECRET_ACCESS_KEY"],
        )
        return dynamodb, [settings.process_table, settings.idempotency_table]

    async def _load_tables(self) -> None:
        dynamodb, tables = self._tables()
        loaded = await asyncio.to_thread(load_tables, dynamodb, tables, self.settings.data_dir)
        self._tables_loaded = True
        if loaded:
            self.say(f"{'stack':<9}| restored {loaded} table items saved at the last stop")

    async def _save_tables(self) -> None:
        moto = next((c for c in self.children if c.name == "moto"), None)
        # Saving before the last snapshot was loaded back would overwrite it with empty tables.
        if moto is None or moto.returncode is not None or not self._tables_loaded:
            return
        try:
            dynamodb, tables = self._tables()
            saved = await asyncio.to_thread(save_tables, dynamodb, tables, self.settings.data_dir)
        except Exception as err:  # e.g. stopped before the tables were made
            self.say(f"{'stack':<9}| tables not saved: {err}")
            return
        self.say(f"{'stack':<9}| saved {saved} table items for the next start")

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
        self._watchers.append(asyncio.create_task(self._watch(child)))
        return child

    async def _watch(self, child: Child) -> None:
        await child.exited()
        if not child.stopping and not self._died.done():
            self._died.set_result(child)

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
        self.say(f"{'stack':<9}| {name} done ({time.monotonic() - started:.1f} s)")

    async def _ready(
        self, child: Child, check: Callable[[], Awaitable[bool]], what: str | None = None
    ) -> None:
        """Poll ``check`` until it holds; fail if the child exits or the deadline passes."""
        what = what or child.name
        started = time.monotonic()
        deadline = started + self.settings.ready_timeout
        while True:
            if child.returncode is not None:
                raise ChildFailed(
                    child, f"{child.name} exited with code {child.returncode} while starting"
                )
            if await check():
                took = time.monotonic() - started
                self.say(f"{'stack':<9}| {what} ready (pid {child.pid}, {took:.1f} s)")
                return
            if time.monotonic() > deadline:
                raise ChildFailed(
                    child, f"{what} was not ready within {self.settings.ready_timeout:g} s"
                )
            await asyncio.sleep(POLL_INTERVAL)

    # -- the demo and the banner ---------------------------------------------------------------

    async def demo(self) -> str | None:
        """Start one process; its approval link once the inbox has the mail."""
        assert self.client is not None and self.app_settings is not None
        try:
            started = await start_process(
                self.client,
                self.app_settings,
                requested_by="make run",
                description="Demo process started by make run. Approve it to see the commands run.",
            )
        except Exception as err:  # the stack is up; say why there is no demo and carry on
            self.say(f"{'stack':<9}| could not start the demo process: {err}")
            return None
        self.say(f"{'stack':<9}| demo process {started.process_id} started")
        links = await wait_for_approval_link(
            self.settings.url(self.settings.inbox_port),
            started.process_id,
            self.settings.ready_timeout,
        )
        return links[0] if links else None

    def banner(self, approval_link: str | None) -> None:
        settings = self.settings
        assert self.app_settings is not None
        namespace = self.app_settings.temporal_namespace
        lines = [
            "",
            f"Temporal UI: {settings.url(settings.ui_port, f'/namespaces/{namespace}/workflows')}",
            f"Inbox: {settings.url(settings.inbox_port, '/')}",
        ]
        if settings.demo:
            lines.append(
                f"Approval link: {approval_link or '(not in the inbox yet: see the inbox page)'}"
            )
        lines.append(
            "Start more: .venv/bin/approval-flow start --requested-by you "
            "--description 'what needs approval'"
        )
        lines.append("Inspect: .venv/bin/approval-flow list | status ID | lock")
        defaults = LocalStackSettings.model_fields
        if (
            settings.temporal_port != defaults["temporal_port"].default
            or settings.inbox_port != defaults["inbox_port"].default
            or settings.host != defaults["host"].default
        ):
            lines.append(
                "  (in another terminal first: export "
                f"TEMPORAL_ADDRESS={settings.temporal_address} "
                f"APPROVAL_INBOX_URL={settings.url(settings.inbox_port)})"
            )
        lines.append(f"Logs: {settings.data_dir / 'logs'}")
        lines.append(
            f"Ready in {time.monotonic() - self._started_at:.1f} s. Ctrl+C stops everything."
        )
        for line in lines:
            self.say(line)

    # -- stopping ------------------------------------------------------------------------------

    async def down(self, kill: bool = False) -> None:
        """Stop the services before the servers they talk to; each group side by side."""
        servers = {"temporal", "moto"}
        clients = [c for c in self.children if c.name not in servers]
        backends = [c for c in self.children if c.name in servers]
        await self._stop_all(clients, kill)
        if not kill:
            await self._save_tables()
        await self._stop_all(backends, kill)
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)

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
            self.say(f"{'stack':<9}| {child.name} stopped (exit {code}, {took:.1f} s)")

        await asyncio.gather(*(stop(c) for c in children))

    def kill_all(self) -> None:
        for child in self.children:
            child.kill()


async def run(settings: LocalStackSettings, terminal: TextIO = sys.stdout) -> int:
    """Run the stack until Ctrl+C, SIGTERM, or a child's death; the process exit code."""
    try:
        check_ports(settings)
    except StackError as err:  # nothing started yet: one line and out
        print(f"make run: {err}", file=sys.stderr)
        return 2
    stack = Stack(settings, terminal)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stack.say(f"{'stack':<9}| stopping (Ctrl+C again to kill at once)")
            stop.set()
        else:
            stack.kill_all()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    code = 0
    try:
        up = asyncio.create_task(stack.up())
        stopper = asyncio.create_task(stop.wait())
        try:
            await _first(up, stopper, stack.died)
            if up.done() and not stop.is_set() and not stack.died.done():
                up.result()  # raises what went wrong while starting
                link = await _race(stack.demo(), stop, stack.died) if settings.demo else None
                if not stop.is_set() and not stack.died.done():
                    stack.banner(link)
                    await _first(stopper, stack.died)
        finally:
            for task in (up, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if stack.died.done() and not stop.is_set():
            child = stack.died.result()
            when = "" if up.done() and not up.cancelled() else " while starting"
            _report_death(stack, child, f"{child.name} exited with code {child.returncode}{when}")
            code = 1
    except OSError as err:  # the data folder cannot be written, ...
        print(f"make run: {err}", file=sys.stderr)
        code = 2
    except ValidationError as err:  # e.g. APPROVAL_SIGNING_KEYS set to something unusable
        problem = err.errors()[0]
        print(f"make run: invalid setting {problem['loc']}: {problem['msg']}", file=sys.stderr)
        code = 2
    except ChildFailed as err:
        _report_death(stack, err.child, str(err))
        code = 1
    finally:
        await stack.down()
        stack.say(f"{'stack':<9}| stopped")
    return code


async def _race(
    work: Awaitable[str | None], stop: asyncio.Event, died: asyncio.Future[Child]
) -> str | None:
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await _first(task, stopper, died)
        return task.result() if task.done() else None
    finally:
        for pending in (task, stopper):
            pending.cancel()


async def _first(*waitables: asyncio.Future[Any]) -> None:
    """Wait until one of them is done."""
    await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)


def _report_death(stack: Stack, child: Child, message: str) -> None:
    lines = [f"make run: {message}; stopping the rest."]
    tail = child.tail()
    if tail:
        lines.append(f"Last lines of {child.name} (all in {child.log_path}):")
        lines.extend(f"  {line}" for line in tail[-15:])
    for line in lines:
        print(line, file=sys.stderr, flush=True)
