"""The downstream systems the two commands go to, simulated.

Command one arrives as an SQS message, command two as an HTTP POST. Either way the simulator
waits a few seconds, as a real system would while it works, then POSTs the outcome to the
command's ``callback_url`` (the callbacks API). It executes each idempotency key once: a repeated
command (a resend after a crash, a duplicate SQS delivery) is acknowledged and not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.logging import bind_process_id
from simulator.aws import consume_queue
from simulator.settings import SimulatorSettings

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger("simulator")

IDEMPOTENCY_HEADER = "Idempotency-Key"
RECENT_COMMANDS = 200


class DownstreamCommand(BaseModel):
    """The body both commands carry (see ``activities/commands.py``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    process_id: str = Field(min_length=1)
    command: str = Field(min_length=1)
    callback_url: str = Field(pattern=r"^https?://")
    idempotency_key: str = Field(min_length=1)
    deadline: datetime | None = None


class CommandRecord(BaseModel):
    """What the simulator did with one command, for ``GET /commands`` and the logs."""

    process_id: str
    command: str
    idempotency_key: str
    # Where the result goes: listed so a person can try the callback route by hand.
    callback_url: str
    via: Literal["sqs", "http"]
    received_at: datetime
    outcome: Literal["pending", "succeeded", "failed"] = "pending"
    callback_status: int | None = None
    callback_attempts: int = 0
    duplicates: int = 0


class ExecutedKeys:
    """Idempotency keys already executed, optionally kept in a JSON-lines file across restarts."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._keys: set[str] = set()
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    self._keys.add(str(json.loads(line)["key"]))

    def claim(self, key: str) -> bool:
        """True the first time ``key`` is seen, False for every repeat."""
        if key in self._keys:
            return False
        self._keys.add(key)
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a") as file:
                file.write(json.dumps({"key": key, "at": datetime.now(UTC).isoformat()}) + "\n")
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._keys


Sleep = Callable[[float], Awaitable[None]]


class Downstream:
    def __init__(
        self,
        settings: SimulatorSettings,
        http: aiohttp.ClientSession,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._http = http
        self._rng = rng or random.Random(settings.seed)
        self._sleep = sleep
        self._executed = ExecutedKeys(settings.state_path)
        self._tasks: set[asyncio.Task[None]] = set()
        self.records: dict[str, CommandRecord] = {}
        self._order: deque[str] = deque()

    def accept(self, command: DownstreamCommand, via: Literal["sqs", "http"]) -> bool:
        """Take a command; False when its key was already executed (then nothing runs)."""
        key = command.idempotency_key
        with bind_process_id(command.process_id):
            if not self._executed.claim(key):
                record = self.records.get(key)
                if record is not None:
                    self.records[key] = record.model_copy(
                        update={"duplicates": record.duplicates + 1}
                    )
                log.info(
                    "%s received again over %s (key %s): not executed twice",
                    command.command,
                    via,
                    key,
                )
                return False
            self._remember(
                CommandRecord(
                    process_id=command.process_id,
                    command=command.command,
                    idempotency_key=key,
                    callback_url=command.callback_url,
                    via=via,
                    received_at=datetime.now(UTC),
                )
            )
            log.info("%s received over %s (key %s)", command.command, via, key)
            task = asyncio.create_task(self._execute(command), name=f"execute {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait for the commands in progress (tests; a stop cancels them instead)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _remember(self, record: CommandRecord) -> None:
        self.records[record.idempotency_key] = record
        self._order.append(record.idempotency_key)
        while len(self._order) > RECENT_COMMANDS:
            self.records.pop(self._order.popleft(), None)

    def _update(self, key: str, **changes: Any) -> None:
        record = self.records.get(key)
        if record is not None:
            self.records[key] = record.model_copy(update=changes)

    async def _execute(self, command: DownstreamCommand) -> None:
        with bind_process_id(command.process_id):
            delay = self._rng.uniform(self._settings.min_delay, self._settings.max_delay)
            fails = self._rng.random() < self._settings.failure_rate
            await self._sleep(delay)
            payload: dict[str, Any]
            if fails:
                payload = {
                    "status": "failed",
                    "error": f"simulated failure of {command.command} "
                    f"(SIMULATOR_FAILURE_RATE={self._settings.failure_rate})",
                }
            else:
                payload = {
                    "status": "succeeded",
                    "result": {
                        "command": command.command,
                        "executed_at": datetime.now(UTC).isoformat(),
                        "took_seconds": round(delay, 3),
                    },
                }
            outcome = payload["status"]
            log.info("%s %s after %.1f s; calling back", command.command, outcome, delay)
            status, attempts = await self._call_back(command, payload)
            self._update(
                command.idempotency_key,
                outcome=outcome,
                callback_status=status,
                callback_attempts=attempts,
            )

    async def _call_back(
        self, command: DownstreamCommand, payload: dict[str, Any]
    ) -> tuple[int | None, int]:
        """POST the outcome; retry connection errors and 5xx with exponential backoff, bounded."""
        settings = self._settings
        timeout = aiohttp.ClientTimeout(total=settings.callback_timeout)
        status: int | None = None
        for attempt in range(1, settings.callback_attempts + 1):
            try:
                async with self._http.post(
                    command.callback_url, json=payload, timeout=timeout
                ) as response:
                    status = response.status
                    detail = (await response.text())[:200]
            except (aiohttp.ClientError, TimeoutError) as err:
                status, detail = None, f"{type(err).__name__}: {err}"
            if status is not None and status < 400:
                log.info("callback for %s answered %s", command.command, status)
                return status, attempt
            if status is not None and status < 500:
                # 409 already decided, 410 expired, ...: retrying would not change the answer.
                log.warning("callback for %s refused: %s %s", command.command, status, detail)
                return status, attempt
            if attempt < settings.callback_attempts:
                wait = settings.callback_backoff * 2 ** (attempt - 1)
                log.warning(
                    "callback for %s failed (%s), try %d of %d, again in %.1f s",
                    command.command,
                    status or detail,
                    attempt,
                    settings.callback_attempts,
                    wait,
                )
                await self._sleep(wait)
        log.error(
            "callback for %s gave up after %d tries (last: %s)",
            command.command,
            settings.callback_attempts,
            status or detail,
        )
        return status, settings.callback_attempts

    # -- command one: SQS -----------------------------------------------------------------------

    async def consume_queue(self, sqs: SQSClient) -> None:
        """Long-poll the command-one queue until cancelled."""
        log.info("consuming command one from %s", self._settings.queue_url)
        await consume_queue(
            sqs,
            self._settings.queue_url,
            self._take_message,
            with_attributes=True,
            sleep=self._sleep,
        )

    def _take_message(self, message: MessageTypeDef) -> None:
        try:
            command = DownstreamCommand.model_validate_json(message.get("Body", ""))
        except ValidationError as err:
            # Nothing to call back; a real system would dead-letter it. Dropped, loudly.
            log.error(
                "dropping malformed command-one message %s: %s", message.get("MessageId"), err
            )
            return
        attribute = message.get("MessageAttributes", {}).get(IDEMPOTENCY_HEADER)
        key = attribute.get("StringValue") if attribute else None
        if key and key != command.idempotency_key:
            log.warning("message attribute key %s differs from body key; using the attribute", key)
            command = command.model_copy(update={"idempotency_key": key})
        self.accept(command, via="sqs")

    # -- command two: HTTP ----------------------------------------------------------------------

    async def handle_command(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _problem(415, "send the command as application/json")
        try:
            command = DownstreamCommand.model_validate_json(await request.read())
        except ValidationError as err:
            return _problem(400, f"malformed command: {err.error_count()} problem(s)")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if not key:
            return _problem(400, f"the {IDEMPOTENCY_HEADER} header is required")
        if key != command.idempotency_key:
            return _problem(400, f"the {IDEMPOTENCY_HEADER} header differs from the body's key")
        new = self.accept(command, via="http")
        # A repeat gets the first answer again (as with Stripe-style idempotency keys).
        return web.json_response(
            {"accepted": True, "duplicate": not new, "idempotency_key": key},
            status=202 if new else 200,
        )

    async def handle_list(self, request: web.Request) -> web.Response:
        """The recent commands, newest first, with what became of them."""
        records = [self.records[key].model_dump(mode="json") for key in reversed(self._order)]
        return web.json_response({"commands": records})


def _problem(status: int, detail: str) -> web.Response:
    """An RFC 9457 problem answer."""
    title = HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.json_response(body, status=status, content_type="application/problem+json")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(downstream: Downstream, command_path: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post(command_path, downstream.handle_command)
    app.router.add_get("/commands", downstream.handle_list)
    app.router.add_get("/healthz", healthz)
    return app
