"""The downstream systems the two commands go to, simulated as well-behaved ones.

Command one arrives as an SQS message, command two as an HTTP POST. Either way the simulator
waits a few seconds, as a real system would while it works, then POSTs the outcome to the
command's ``callback_url`` (the callbacks API). It behaves as a downstream system should:

- each idempotency key runs once; a repeat gets the first answer again (checked first);
- it honours the lock's fence (``simulator/fence.py``): a command carrying a lease lower than
  the highest seen for its resource is refused, with 409 over HTTP, and over SQS by dropping it
  with a failed callback;
- it keeps the work it took durably (``simulator/work.py``) and resumes it after a restart;
- a key is done once its callback was delivered or refused for good (a 4xx); when its bounded
  tries run out the result is still owed: a resend of the key, a redrive or the next start calls
  back again, with a fresh budget of tries;
- while it works it heartbeats (``SIMULATOR_HEARTBEAT_INTERVAL``), reporting its progress;
- a redrive (the same key sent again with a higher ``redrive``) is answered as a well-behaved
  system should: work that succeeded is not done again, its result goes to the new callback
  (also when it was being delivered to the old one); work still under way reports to the new
  callback when done; work that failed runs again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.logging import bind_process_id
from common.tracing import TRACE_HEADERS, TRACEPARENT
from simulator.aws import consume_queue
from simulator.fence import (
    LEASE_HEADER,
    RESOURCE_HEADER,
    Fence,
    MalformedFence,
    Refusal,
    parse_fence,
)
from simulator.settings import SimulatorSettings
from simulator.work import DownstreamCommand, Job, WorkBook

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueOutputTypeDef, MessageTypeDef

__all__ = ["CommandRecord", "Downstream", "DownstreamCommand", "create_app"]

log = logging.getLogger("simulator")

IDEMPOTENCY_HEADER = "Idempotency-Key"
RECENT_COMMANDS = 200
# A command is well under 2 KiB; more is refused with 413.
MAX_BODY_BYTES = 64 * 1024
# The 4xx answers that say "not now" rather than "no": retried like a 5xx.
RETRYABLE_4XX = frozenset({HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS})

Via = Literal["sqs", "http"]
Sleep = Callable[[float], Awaitable[None]]


class CommandRecord(BaseModel):
    """What the simulator did with one command, for ``GET /commands``."""

    process_id: str
    command: str
    idempotency_key: str
    # Where the result goes: listed so a person can try the callback route by hand.
    callback_url: str
    via: Via
    received_at: datetime
    lock_resource: str | None = None
    lease_id: int | None = None
    outcome: Literal["pending", "succeeded", "failed", "fenced"] = "pending"
    callback_status: int | None = None
    callback_attempts: int = 0
    # The callback was delivered or refused for good: the key is done.
    done: bool = False
    # The last budget of callback tries ran out; a resend, a redrive or a restart tries again.
    gave_up: bool = False
    duplicates: int = 0
    redrives: int = 0
    heartbeats: int = 0
    # The trace the command belongs to, to find it in a tracing backend.
    traceparent: str | None = None

    @classmethod
    def of(cls, job: Job) -> CommandRecord:
        command = job.command
        return cls(
            process_id=command.process_id,
            command=command.command,
            idempotency_key=command.idempotency_key,
            callback_url=command.callback_url,
            via=job.via,
            received_at=job.received_at,
            lock_resource=job.fence.resource if job.fence else None,
            lease_id=job.fence.lease_id if job.fence else None,
            outcome=job.outcome,
            callback_status=job.callback_status,
            callback_attempts=job.callback_attempts,
            done=job.done,
            gave_up=job.gave_up,
            duplicates=job.duplicates,
            redrives=job.redrives,
            heartbeats=job.heartbeats,
            traceparent=command.trace_context.get(TRACEPARENT),
        )


@dataclass(frozen=True)
class Taken:
    """What became of a command handed to :meth:`Downstream.take`."""

    verdict: Literal["accepted", "duplicate", "redriven", "refused"]
    # The job held for it; None for an HTTP command refused (its answer is the refusal).
    job: Job | None
    refusal: Refusal | None = None


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
        self.book = WorkBook(settings.state_path)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def resume(self) -> int:
        """Carry on with every job the journal holds unfinished; how many."""
        unfinished = list(self.book.unfinished())
        for job in unfinished:
            with bind_process_id(job.command.process_id):
                if job.gave_up:
                    # Its result is still owed, and a start may be what its receiver waited for
                    # (the callbacks API back, a route fixed): one more budget of tries.
                    log.info(
                        "%s resumed (key %s): its callback gave up before, trying again",
                        job.command.command,
                        job.key,
                    )
                    self.book.retry(job.key)
                else:
                    log.info("%s resumed (key %s)", job.command.command, job.key)
            self._run(job)
        return len(unfinished)

    def take(
        self,
        command: DownstreamCommand,
        via: Via,
        fence: Fence | None = None,
        malformed_fence: str | None = None,
    ) -> Taken:
        """Take a command: the idempotency key first, then the fence, then the work."""
        key = command.idempotency_key
        with bind_process_id(command.process_id):
            held = self.book.jobs.get(key)
            if held is not None and command.redrive > held.command.redrive:
                return self._redrive(held, command, via, fence, malformed_fence)
            if held is not None:
                held.duplicates += 1
                if held.done:
                    state = "done"
                elif held.gave_up:
                    state = "its callback gave up before: calling back again"
                    self.book.retry(key)  # the sender still waits: a fresh budget of tries
                else:
                    state = "still in progress"
                log.info("%s received again over %s (key %s, %s)", command.command, via, key, state)
                self._run(held)  # a job that stopped on an error resumes on a resend
                return Taken("duplicate", held)

            refusal = self.book.fences.refusal(fence) if fence is not None else None
            reason = refusal.message if refusal is not None else malformed_fence
            if reason is not None:
                log.warning("%s over %s refused (key %s): %s", command.command, via, key, reason)
                if via == "http":
                    return Taken("refused", None, refusal)
                # Over SQS nobody waits for an answer: the refusal goes to the callback.
                job = self._job(command, via, fence, refused=reason)
                self.book.take(job)
                self._run(job)
                return Taken("refused", job, refusal)

            job = self._job(command, via, fence)
            self.book.take(job)  # on disk before anyone hears "accepted"
            lease = f", lease {fence.lease_id} of {fence.resource}" if fence else ""
            log.info("%s received over %s (key %s%s)", command.command, via, key, lease)
            self._run(job)
            return Taken("accepted", job)

    def _redrive(
        self,
        held: Job,
        command: DownstreamCommand,
        via: Via,
        fence: Fence | None,
        malformed_fence: str | None,
    ) -> Taken:
        """The key again, from a redrive of its process: the fence first, then by how it went.

        The job is changed in place and journaled whole. Work still under way reads the new
        callback when it ends; a result already being called back (posting, or pausing between
        tries) stops and starts again towards the new callback, with a fresh budget of tries:
        the old callback belongs to the run that was redriven, and the new run waits for it.
        """
        key = command.idempotency_key
        refusal = self.book.fences.refusal(fence) if fence is not None else None
        reason = refusal.message if refusal is not None else malformed_fence
        if reason is not None:
            log.warning(
                "%s redrive over %s refused (key %s): %s", command.command, via, key, reason
            )
            return Taken("refused", None, refusal)
        previous = held.outcome
        held.command = command
        held.via = via
        held.fence = fence or held.fence
        held.redrives += 1
        if previous == "pending":
            what = "still under way: its result goes to the new callback"
        elif previous == "succeeded":
            # Done once is done: the result is delivered again, the work is not redone.
            held.callback_attempts, held.callback_status, held.done = 0, None, False
            held.gave_up = False
            what = "done before: its result goes to the new callback, the work is not redone"
        else:
            # Failed (or fenced) work is worth another try: a new plan, as for a new command.
            fresh = self._job(command, via, fence, first_run=False)
            held.received_at, held.delay, held.fails = fresh.received_at, fresh.delay, fresh.fails
            held.fails_because = fresh.fails_because
            held.refused, held.payload = None, None
            held.callback_attempts, held.callback_status, held.done = 0, None, False
            held.gave_up = False
            what = f"{previous} before: it runs again"
        self.book.take(held)
        if previous != "pending":
            # A task still calling back holds the old callback URL (and maybe a long pause).
            self._stop_calling_back(held)
        log.info(
            "%s redrive %d received over %s (key %s): %s",
            command.command,
            command.redrive,
            via,
            key,
            what,
        )
        self._run(held)
        return Taken("redriven", held)

    async def drain(self) -> None:
        """Wait for the commands in progress (tests; a stop cancels them instead)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop working; what is unfinished stays in the journal for the next start."""
        self._closing = True
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        self.book.close()

    def _job(
        self,
        command: DownstreamCommand,
        via: Via,
        fence: Fence | None,
        refused: str | None = None,
        first_run: bool = True,
    ) -> Job:
        if refused is not None:
            return Job(
                command=command,
                via=via,
                received_at=datetime.now(UTC),
                fence=fence,
                refused=refused,
            )
        fails = self._rng.random() < self._settings.failure_rate or (
            first_run and command.command in self._settings.fail_once
        )
        return Job(
            command=command,
            via=via,
            received_at=datetime.now(UTC),
            fence=fence,
            delay=self._rng.uniform(*self._settings.delays(command.command)),
            fails=fails,
            fails_because=self._why_it_fails(command.command, first_run) if fails else None,
        )

    def _why_it_fails(self, command: str, first_run: bool) -> str:
        """The setting a failure comes from, as its callback names it."""
        if first_run and command in self._settings.fail_once:
            return f"SIMULATOR_FAIL_ONCE={','.join(sorted(self._settings.fail_once))}"
        return f"SIMULATOR_FAILURE_RATE={self._settings.failure_rate}"

    def _run(self, job: Job) -> None:
        if job.done or job.key in self._running or self._closing:
            return
        task = asyncio.create_task(self._work(job), name=f"execute {job.key}")
        self._running[job.key] = task
        task.add_done_callback(lambda _: self._forget(job.key, task))

    def _forget(self, key: str, task: asyncio.Task[Any] | None) -> None:
        """Take ``task`` out of ``_running``, unless another task already works on ``key``."""
        if task is not None and self._running.get(key) is task:
            del self._running[key]

    def _stop_calling_back(self, job: Job) -> None:
        """Cancel the task that works on ``job``, if any, and run the job again once it stopped.

        Only for a job whose work is over: a cancelled callback is resent whole, while cancelled
        work would start its wait over.
        """
        task = self._running.get(job.key)
        if task is None:
            return
        task.cancel()
        # After the callback that takes the task out of ``_running`` (added first, run first).
        task.add_done_callback(lambda _: self._run(job))

    async def _work(self, job: Job) -> None:
        command = job.command
        with bind_process_id(command.process_id):
            try:
                if job.payload is None:
                    payload = await self._execute(job)
                    self.book.worked(job.key, payload)
                if await self._call_back(job):
                    self.book.finished(job.key)
                else:
                    # Not done: the result is still owed (a resend, a redrive or a start retries).
                    self.book.gave_up(job.key)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The job stays unfinished in the journal: a resend or the next start resumes it.
                log.exception("%s (key %s) stopped on an error", command.command, job.key)
            finally:
                # At once, not in a done callback: a resend arriving before that callback runs
                # would find the key still running and start nothing.
                self._forget(job.key, asyncio.current_task())

    async def _execute(self, job: Job) -> dict[str, Any]:
        """Do the simulated work (or not, for a refused command); the callback body."""
        if job.refused is not None:
            return {"status": "failed", "error": job.refused}
        await self._work_until_due(job)
        command = job.command.command
        if job.fails:
            # A job journaled before ``fails_because`` existed says what today's settings say.
            why = job.fails_because or self._why_it_fails(command, first_run=not job.redrives)
            payload: dict[str, Any] = {
                "status": "failed",
                "error": f"simulated failure of {command} ({why})",
            }
        else:
            payload = {
                "status": "succeeded",
                "result": {
                    "command": command,
                    "executed_at": datetime.now(UTC).isoformat(),
                    "took_seconds": round(job.delay, 3),
                },
            }
        log.info("%s %s after %.1f s; calling back", command, payload["status"], job.delay)
        return payload

    async def _work_until_due(self, job: Job) -> None:
        """The simulated work: wait until the job is due, heartbeating meanwhile if set.

        With heartbeats set, the first goes out as the work starts even when the job is already
        due (picked up late, or with no delay at all): a system that heartbeats says it started.
        """
        interval = self._settings.heartbeat_interval
        if interval is not None and not await self._heartbeat(job):
            interval = None  # refused for good: the work goes on without heartbeats
        remaining = (job.due - datetime.now(UTC)).total_seconds()
        while interval is not None and remaining > 0:
            await self._sleep(min(interval, remaining))
            remaining = (job.due - datetime.now(UTC)).total_seconds()
            if remaining > 0 and not await self._heartbeat(job):
                interval = None
        if remaining > 0:
            await self._sleep(remaining)

    async def _heartbeat(self, job: Job) -> bool:
        """POST the progress to the heartbeat URL; False once it is refused for good (4xx).

        A heartbeat that does not get through is not retried: the next one comes soon.
        """
        elapsed = (datetime.now(UTC) - job.received_at).total_seconds()
        percent = 100 if job.delay <= 0 else min(100, round(100 * elapsed / job.delay))
        try:
            async with self._http.post(
                job.heartbeat_url,
                json={"progress": {"percent": percent}},
                timeout=aiohttp.ClientTimeout(total=self._settings.callback_timeout),
                headers=job.command.trace_context,
            ) as response:
                status = response.status
                detail = (await response.text())[:200]
        except (aiohttp.ClientError, TimeoutError) as err:
            log.debug("heartbeat for %s not delivered: %s", job.command.command, err)
            return True
        job.heartbeats += 1
        if 400 <= status < 500:
            log.warning(
                "heartbeat for %s refused (%s %s); no more heartbeats for it",
                job.command.command,
                status,
                detail,
            )
            return False
        return True

    async def _call_back(self, job: Job) -> bool:
        """POST the outcome; retry connection errors, 408, 429 and 5xx with capped backoff.

        True once the callback was delivered or refused for good (another 4xx); False when the
        budget of tries ran out. Every attempt is journaled, so the bound holds across restarts.
        """
        settings = self._settings
        timeout = aiohttp.ClientTimeout(total=settings.callback_timeout)
        detail = ""
        while job.callback_attempts < settings.callback_attempts:
            # Read at each try: the newest sending of the key names where its result goes.
            command = job.command
            status: int | None
            try:
                async with self._http.post(
                    command.callback_url,
                    json=job.payload,
                    timeout=timeout,
                    headers=command.trace_context,  # the process's trace continues there
                ) as response:
                    status = response.status
                    detail = (await response.text())[:200]
            except (aiohttp.ClientError, TimeoutError) as err:
                status, detail = None, f"{type(err).__name__}: {err}"
            self.book.attempted(job.key, status)
            if status is not None and status < 400:
                log.info("callback for %s answered %s", command.command, status)
                return True
            if status is not None and status < 500 and status not in RETRYABLE_4XX:
                # 409 already decided, 410 expired, ...: retrying would not change the answer.
                log.warning("callback for %s refused: %s %s", command.command, status, detail)
                return True
            if job.callback_attempts < settings.callback_attempts:
                wait = min(
                    settings.callback_backoff * 2 ** (job.callback_attempts - 1),
                    settings.callback_max_backoff,
                )
                log.warning(
                    "callback for %s failed (%s), try %d of %d, again in %.1f s",
                    command.command,
                    status or detail,
                    job.callback_attempts,
                    settings.callback_attempts,
                    wait,
                )
                await self._sleep(wait)
        log.error(
            "callback for %s gave up after %d tries (last: %s); the key is not done: a resend, "
            "a redrive or a restart calls back again",
            job.command.command,
            job.callback_attempts,
            job.callback_status or detail or "none",
        )
        return False

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
        """Take one message; it is deleted from the queue only after this returns."""
        try:
            body = _json_object(message.get("Body", ""))
            command = DownstreamCommand.model_validate(body)
        except (ValueError, ValidationError) as err:
            # Nothing to call back; a real system would dead-letter it. Dropped, loudly.
            log.error(
                "dropping malformed command-one message %s: %s", message.get("MessageId"), err
            )
            return
        attributes = message.get("MessageAttributes", {})
        attribute = attributes.get(IDEMPOTENCY_HEADER)
        key = attribute.get("StringValue") if attribute else None
        if key and key != command.idempotency_key:
            log.warning("message attribute key %s differs from body key; using the attribute", key)
            command = command.model_copy(update={"idempotency_key": key})
        fence: Fence | None = None
        malformed: str | None = None
        try:
            fence = parse_fence(_attribute_text(attributes), body, "message attribute")
        except MalformedFence as err:
            malformed = f"malformed fence: {err}"
        trace_context = {
            name: str(attributes[name].get("StringValue", ""))
            for name in TRACE_HEADERS
            if name in attributes
        }
        command = command.model_copy(update={"trace_context": trace_context})
        self.take(command, "sqs", fence, malformed)

    # -- command two: HTTP ----------------------------------------------------------------------

    async def handle_command(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _problem(415, "send the command as application/json")
        try:
            body = _json_object(await request.read())
            command = DownstreamCommand.model_validate(body)
        except ValidationError as err:
            return _problem(400, f"malformed command: {err.error_count()} problem(s)")
        except ValueError as err:
            return _problem(400, f"malformed command: {err}")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if not key:
            return _problem(400, f"the {IDEMPOTENCY_HEADER} header is required")
        if key != command.idempotency_key:
            return _problem(400, f"the {IDEMPOTENCY_HEADER} header differs from the body's key")
        fence: Fence | None = None
        held = self.book.jobs.get(key)
        # A resend of a key already taken gets its first answer, whatever its fence says now;
        # a redrive is new work under the key, fenced as a new command is.
        if held is None or command.redrive > held.command.redrive:
            try:
                fence = parse_fence(request.headers, body, "header")
            except MalformedFence as err:
                return _problem(400, f"malformed fence: {err}")
        trace_context = {n: request.headers[n] for n in TRACE_HEADERS if n in request.headers}
        command = command.model_copy(update={"trace_context": trace_context})
        taken = self.take(command, "http", fence)
        refused = taken.job.refused if taken.job is not None else None
        if taken.refusal is not None:
            refusal = taken.refusal
            return _problem(
                409,
                refusal.message,
                lock_resource=refusal.resource,
                lease_id=refusal.lease_id,
                highest_lease_id=refusal.highest,
            )
        if refused is not None:  # a key refused before: the same answer again
            return _problem(409, refused)
        if taken.verdict == "redriven":
            return web.json_response(
                {
                    "accepted": True,
                    "duplicate": False,
                    "redrive": command.redrive,
                    "idempotency_key": key,
                },
                status=202,
            )
        # A repeat gets the first answer again (as with Stripe-style idempotency keys).
        new = taken.verdict == "accepted"
        return web.json_response(
            {"accepted": True, "duplicate": not new, "idempotency_key": key},
            status=202 if new else 200,
        )

    async def handle_list(self, request: web.Request) -> web.Response:
        """The recent commands, newest first, with what became of them."""
        records = [
            CommandRecord.of(job).model_dump(mode="json")
            for job in self.book.newest(RECENT_COMMANDS)
        ]
        return web.json_response({"commands": records})


def _json_object(text: str | bytes) -> dict[str, Any]:
    """A JSON object, or ValueError saying why not (too deep a nesting included)."""
    try:
        body = json.loads(text)
    except RecursionError:
        # The decoder recurses per level: a few thousand ``[`` in a small body exhaust the stack.
        raise ValueError("the JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    return body


def _attribute_text(
    attributes: Mapping[str, MessageAttributeValueOutputTypeDef],
) -> dict[str, str]:
    """The fence's message attributes as text, checking their SQS data types."""
    text: dict[str, str] = {}
    for name, data_type in ((RESOURCE_HEADER, "String"), (LEASE_HEADER, "Number")):
        attribute = attributes.get(name)
        if attribute is None:
            continue
        # SQS allows custom suffixes: "Number.int" is a Number too.
        if attribute.get("DataType", "").split(".", 1)[0] != data_type:
            raise MalformedFence(f"the {name} message attribute must be of type {data_type}")
        text[name] = attribute.get("StringValue", "")
    return text


def _problem(status: int, detail: str, **extensions: Any) -> web.Response:
    """An RFC 9457 problem answer; ``extensions`` are extra members for programs to read."""
    title = HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body.update(extensions)
    return web.json_response(body, status=status, content_type="application/problem+json")


@web.middleware
async def _problems(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, 413) and any failure as problem documents too."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        if err.status == HTTPStatus.NOT_FOUND:
            detail = f"nothing at {request.path}"
        elif err.status == HTTPStatus.METHOD_NOT_ALLOWED:
            detail = f"{request.path} does not take {request.method}"
        elif err.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            detail = f"the body is larger than the {MAX_BODY_BYTES} bytes accepted"
        else:
            detail = err.reason
        problem = _problem(err.status, detail)
        if "Allow" in err.headers:
            problem.headers["Allow"] = err.headers["Allow"]
        return problem
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _problem(500, "the simulator failed on this request; its log says why")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(downstream: Downstream, command_path: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_problems])
    app.router.add_post(command_path, downstream.handle_command)
    app.router.add_get("/commands", downstream.handle_list)
    app.router.add_get("/healthz", healthz)
    return app
