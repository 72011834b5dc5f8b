"""The approvers' inbox: the approval mails published to SNS, on a local page and in the terminal.

In production the approval topic has e-mail subscribers. Here the inbox subscribes an SQS queue
of its own to the topic (the emulator delivers SNS to SQS without a confirmation round trip),
reads it, and shows each message with its links, newest first, at ``/``. ``/messages.json`` lists
the same for scripts and tests (``?approver=ID`` for one approver's mail). Each mail to a named
approver says whom it went to: the SNS message attribute ``approver``, which in production routes
it to that approver's own subscription. ``python -m simulator.inbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import re
import sys
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from common.logging import configure
from common.settings import load_settings
from simulator.aws import clients, consume_queue
from simulator.serve import CannotListen, serve
from simulator.settings import InboxSettings

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger("inbox")

_PROCESS = re.compile(r"\bprocess-[0-9A-Za-z-]+")
_APPROVAL_LINK = re.compile(r"https?://[^\s<>\"']+/approvals/[^\s<>\"'?]+(?:\?[^\s<>\"']*)?")
_ANY_LINK = re.compile(r"https?://[^\s<>\"']+")
_TO_LINE = re.compile(r"\ATo: (.+)$", re.MULTILINE)
REFRESH_SECONDS = 5
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class InboxMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    message_id: str
    subject: str
    body: str
    received_at: datetime
    process_id: str | None = None
    approve_url: str | None = None
    reject_url: str | None = None
    # Whom a named approver's mail went to: their id ("*" for the shared link), as the mail
    # names them, and whether it was the request, a reminder or an escalation.
    approver: str | None = None
    to: str | None = None
    kind: str | None = None

    @classmethod
    def from_sns(cls, envelope: dict[str, Any]) -> InboxMessage:
        """Parse an SNS notification as delivered to SQS (not raw: the envelope has the subject)."""
        body = str(envelope.get("Message", ""))
        subject = str(envelope.get("Subject") or "(no subject)")
        approve = reject = None
        for link in _APPROVAL_LINK.findall(body):
            if "decision=reject" in link:
                reject = reject or link
            else:
                approve = approve or link
        process = _PROCESS.search(subject) or _PROCESS.search(body)
        attributes = envelope.get("MessageAttributes")
        attributes = attributes if isinstance(attributes, dict) else {}
        to_line = _TO_LINE.search(body)
        timestamp = envelope.get("Timestamp")
        try:
            received = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
        except ValueError:
            received = datetime.now(UTC)
        return cls(
            message_id=str(envelope.get("MessageId", "")),
            subject=subject,
            body=body,
            received_at=received,
            process_id=process.group(0) if process else None,
            approve_url=approve,
            reject_url=reject,
            approver=_attribute(attributes, "approver"),
            to=to_line.group(1).strip() if to_line else None,
            kind=_attribute(attributes, "kind"),
        )


def _attribute(attributes: dict[str, Any], name: str) -> str | None:
    """A string SNS message attribute as delivered to SQS: ``{"Type": ..., "Value": ...}``."""
    value = attributes.get(name)
    return str(value["Value"]) if isinstance(value, dict) and "Value" in value else None


class Mailbox:
    """The messages received, newest first, optionally kept in a JSON-lines file."""

    def __init__(self, limit: int, path: Path | None = None) -> None:
        self._messages: deque[InboxMessage] = deque(maxlen=limit)
        self._seen: set[str] = set()
        self._path = path
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValidationError):
                    self._add(InboxMessage.model_validate_json(line))

    def _add(self, message: InboxMessage) -> bool:
        if message.message_id in self._seen:
            return False
        self._seen.add(message.message_id)
        self._messages.appendleft(message)
        return True

    def add(self, message: InboxMessage) -> bool:
        """False for a message already here (SQS delivers at least once)."""
        if not self._add(message):
            return False
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a") as file:
                file.write(message.model_dump_json() + "\n")
        return True

    def messages(
        self, process_id: str | None = None, approver: str | None = None
    ) -> list[InboxMessage]:
        return [
            m
            for m in self._messages
            if (process_id is None or m.process_id == process_id)
            and (approver is None or m.approver == approver)
        ]


class Inbox:
    def __init__(self, settings: InboxSettings, out: TextIO | None = None) -> None:
        self._settings = settings
        self.mailbox = Mailbox(settings.max_messages, settings.store_path)
        self._out = out if out is not None else sys.stdout
        self.queue_url: str | None = None

    def subscribe(self, sqs: SQSClient, sns: SNSClient) -> str:
        """Create the inbox queue and subscribe it to the topic; both calls are idempotent."""
        queue_url = sqs.create_queue(QueueName=self._settings.queue_name)["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        topic = self._settings.topic_arn
        # Real SQS also needs a queue policy allowing the topic to send; the emulator does not.
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        self.queue_url = queue_url
        log.info("subscribed %s to %s", queue_arn, topic)
        return queue_url

    def receive(self, envelope: dict[str, Any]) -> InboxMessage | None:
        message = InboxMessage.from_sns(envelope)
        if not self.mailbox.add(message):
            return None
        self._echo(message)
        return message

    def _echo(self, message: InboxMessage) -> None:
        if not self._settings.echo:
            return
        rule = "-" * 72
        print(f"{rule}\nNew mail: {message.subject}\n\n{message.body}\n{rule}", file=self._out)
        self._out.flush()

    async def consume(self, sqs: SQSClient) -> None:
        """Long-poll the inbox queue until cancelled."""
        queue_url = self.queue_url
        if queue_url is None:
            raise RuntimeError("subscribe() first")
        await consume_queue(sqs, queue_url, self._take_notification)

    def _take_notification(self, sqs_message: MessageTypeDef) -> None:
        try:
            envelope = json.loads(sqs_message.get("Body", ""))
            if not isinstance(envelope, dict):
                raise ValueError("not an SNS notification")
            self.receive(envelope)
        except ValueError as err:
            log.error("dropping message %s: %s", sqs_message.get("MessageId"), err)
        except RecursionError:
            # Raised out of the consumer, it would end the process, and the message come back.
            log.error("dropping message %s: nested too deeply", sqs_message.get("MessageId"))

    # -- HTTP -------------------------------------------------------------------------------------

    async def handle_json(self, request: web.Request) -> web.Response:
        """``GET /messages.json[?process_id=…][&approver=…]``: newest first."""
        process_id = request.query.get("process_id") or None
        approver = request.query.get("approver") or None
        messages = [m.model_dump(mode="json") for m in self.mailbox.messages(process_id, approver)]
        return web.json_response({"messages": messages})

    async def handle_page(self, request: web.Request) -> web.Response:
        response = web.Response(text=render_page(self.mailbox.messages()), content_type="text/html")
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _linkify(text: str) -> str:
    """Escape ``text`` and make its URLs clickable."""
    parts: list[str] = []
    last = 0
    for match in _ANY_LINK.finditer(text):
        parts.append(html.escape(text[last : match.start()]))
        url = html.escape(match.group(0), quote=True)
        parts.append(f'<a href="{url}">{url}</a>')
        last = match.end()
    parts.append(html.escape(text[last:]))
    return "".join(parts)


def _render_message(message: InboxMessage) -> str:
    received = message.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    to = message.to or message.approver
    meta = f"to {html.escape(to)}, received {received}" if to else f"received {received}"
    return (
        f"<article>\n<h2>{html.escape(message.subject)}</h2>\n"
        f'<p class="meta">{meta}</p>\n'
        f"<pre>{_linkify(message.body)}</pre>\n</article>"
    )


def render_page(messages: list[InboxMessage]) -> str:
    if messages:
        items = "\n".join(_render_message(m) for m in messages)
    else:
        items = (
            "<p>No approval mail yet. Start a process: <code>.venv/bin/approval-flow start "
            "--requested-by you --description 'what for'</code></p>"
        )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Approval inbox ({len(messages)})</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }}
article {{ border: 1px solid #888; border-radius: 6px; padding: 0 1rem; margin: 1rem 0; }}
pre {{ white-space: pre-wrap; word-break: break-all; font-size: 0.95rem; }}
.meta {{ color: #555; margin-top: -0.5rem; }}
</style>
</head>
<body>
<h1>Approval inbox</h1>
<p>The approval mails the workflow published to SNS, newest first.
This page reloads every {REFRESH_SECONDS} s.</p>
{items}
</body>
</html>
"""


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(inbox: Inbox) -> web.Application:
    app = web.Application()
    app.router.add_get("/", inbox.handle_page)
    app.router.add_get("/messages.json", inbox.handle_json)
    app.router.add_get("/healthz", healthz)
    return app


async def run(settings: InboxSettings) -> None:
    sqs, sns = clients(settings.aws_region, settings.aws_endpoint_url)
    inbox = Inbox(settings)
    await asyncio.to_thread(inbox.subscribe, sqs, sns)
    log.info("approval inbox on http://%s:%d/", settings.host, settings.port)
    await serve(create_app(inbox), settings.host, settings.port, inbox.consume(sqs))


def main() -> None:
    settings = load_settings(InboxSettings, "inbox")
    configure(settings)
    try:
        asyncio.run(run(settings))
    except CannotListen as err:
        print(f"inbox: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # e.g. the topic does not exist: one line, not a traceback
        print(f"inbox: cannot start: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
