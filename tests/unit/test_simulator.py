"""The downstream simulator and the inbox, over real HTTP on loopback (no AWS needed)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from activities.notifications import approval_body, approval_links, approval_subject
from simulator.downstream import Downstream, DownstreamCommand, create_app
from simulator.fence import Fence
from simulator.inbox import Inbox, InboxMessage, Mailbox, render_page
from simulator.inbox import create_app as create_inbox_app
from simulator.settings import InboxSettings, SimulatorSettings
from simulator.work import Job, WorkBook
from tests.support.http import serving
from workflows.messages import Approver, NotifyApprovers, PublishApprovalRequest


async def no_sleep(seconds: float) -> None:
    """The simulator's waits, skipped: the tests check what it does, not how long it takes."""


class CallbackReceiver:
    """Stands in for the callbacks API: answers with the given statuses, then 202."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        status = self.statuses.pop(0) if self.statuses else 202
        return web.json_response({"status": "seen"}, status=status)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/callbacks/{token}", self.handle)
        return app


def settings(**overrides: Any) -> SimulatorSettings:
    values: dict[str, Any] = {
        "min_delay": 0,
        "max_delay": 0,
        "callback_backoff": 0,
        "seed": 7,
        **overrides,
    }
    return SimulatorSettings(**values)


def command(callback_base: str, key: str = "process-1:command-two") -> dict[str, Any]:
    return {
        "process_id": "process-1",
        "command": key.rsplit(":", 1)[-1],
        "callback_url": f"{callback_base}/callbacks/token-{key}",
        "idempotency_key": key,
        "deadline": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }


@asynccontextmanager
async def simulator(
    receiver: CallbackReceiver, **overrides: Any
) -> AsyncIterator[tuple[Downstream, str, str, aiohttp.ClientSession]]:
    """A simulator serving command two, the receiver it calls back, and a client session."""
    async with aiohttp.ClientSession() as http, serving(receiver.app()) as callbacks:
        downstream = Downstream(settings(**overrides), http, sleep=no_sleep)
        async with serving(create_app(downstream, "/commands/two")) as base:
            try:
                yield downstream, base, callbacks, http
            finally:
                await downstream.close()


async def post_command(
    http: aiohttp.ClientSession, base: str, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Idempotency-Key": key or body["idempotency_key"]}
    async with http.post(f"{base}/commands/two", json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_a_repeated_command_is_not_executed_twice() -> None:
    receiver = CallbackReceiver()
    async with simulator(receiver) as (downstream, base, callbacks, http):
        body = command(callbacks)
        assert await post_command(http, base, body) == (
            202,
            {"accepted": True, "duplicate": False, "idempotency_key": body["idempotency_key"]},
        )
        status, answer = await post_command(http, base, body)
        assert (status, answer["duplicate"]) == (200, True)
        await downstream.drain()

        assert len(receiver.received) == 1
        assert receiver.received[0]["status"] == "succeeded"
        assert receiver.received[0]["result"]["command"] == "command-two"
        async with http.get(f"{base}/commands") as response:
            [record] = (await response.json())["commands"]
        assert record["outcome"] == "succeeded"
        assert record["callback_status"] == 202
        assert record["duplicates"] == 1
        assert record["callback_url"] == body["callback_url"]  # to try the route by hand


async def test_failure_rate_one_calls_back_failed() -> None:
    receiver = CallbackReceiver()
    async with simulator(receiver, failure_rate=1.0) as (downstream, base, callbacks, http):
        await post_command(http, base, command(callbacks))
        await downstream.drain()
    [callback] = receiver.received
    assert callback["status"] == "failed"
    assert "simulated failure of command-two" in callback["error"]


async def test_callback_retried_on_5xx_until_accepted() -> None:
    receiver = CallbackReceiver(503, 500)
    async with simulator(receiver) as (downstream, base, callbacks, http):
        body = command(callbacks)
        await post_command(http, base, body)
        await downstream.drain()
        record = downstream.book.jobs[body["idempotency_key"]]
    assert len(receiver.received) == 3
    assert (record.callback_status, record.callback_attempts) == (202, 3)


async def test_callback_retries_are_bounded() -> None:
    receiver = CallbackReceiver(*[503] * 10)
    async with simulator(receiver, callback_attempts=3) as (downstream, base, callbacks, http):
        await post_command(http, base, command(callbacks))
        await downstream.drain()
    assert len(receiver.received) == 3


async def test_callback_4xx_is_not_retried() -> None:
    receiver = CallbackReceiver(410)
    async with simulator(receiver) as (downstream, base, callbacks, http):
        await post_command(http, base, command(callbacks))
        await downstream.drain()
    assert len(receiver.received) == 1


async def test_callback_connection_errors_are_retried() -> None:
    receiver = CallbackReceiver()
    async with simulator(receiver, callback_attempts=2) as (downstream, base, _, http):
        body = command("http://127.0.0.1:9")  # the discard port: nothing listens
        await post_command(http, base, body)
        await downstream.drain()
        record = downstream.book.jobs[body["idempotency_key"]]
    assert (record.callback_status, record.callback_attempts) == (None, 2)


async def test_bad_command_requests_are_refused() -> None:
    receiver = CallbackReceiver()
    async with simulator(receiver) as (downstream, base, callbacks, http):
        body = command(callbacks)
        assert (await post_command(http, base, body, key="other"))[0] == 400
        async with http.post(f"{base}/commands/two", data="x") as response:
            assert response.status == 415
        async with http.post(
            f"{base}/commands/two", json={"command": "x"}, headers={"Idempotency-Key": "k"}
        ) as response:
            assert response.status == 400
            assert response.content_type == "application/problem+json"
        async with http.post(f"{base}/commands/two", json=body) as response:
            assert response.status == 400  # no Idempotency-Key header
        await downstream.drain()
    assert receiver.received == []


async def test_deeply_nested_json_is_refused_with_400() -> None:
    receiver = CallbackReceiver()
    deep = "[" * 30_000  # small (30 kB), but deeper than the JSON decoder's recursion allows
    async with simulator(receiver) as (downstream, base, _, http):
        headers = {"Idempotency-Key": "k", "Content-Type": "application/json"}
        async with http.post(f"{base}/commands/two", data=deep, headers=headers) as response:
            assert response.status == 400
            assert response.content_type == "application/problem+json"
            problem = await response.json(content_type=None)
        assert problem["detail"] == "malformed command: the JSON is nested too deeply"
        # Over SQS the same message is dropped, loudly, and the consumer goes on.
        downstream._take_message({"MessageId": "m1", "ReceiptHandle": "r1", "Body": deep})
        await downstream.drain()
        assert downstream.book.jobs == {}
    assert receiver.received == []


async def test_every_refusal_is_a_problem_document(monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = CallbackReceiver()
    async with simulator(receiver) as (downstream, base, _, http):

        def broken(limit: int) -> list[Job]:
            raise RuntimeError("a bug")

        monkeypatch.setattr(downstream.book, "newest", broken)
        headers = {"Idempotency-Key": "k", "Content-Type": "application/json"}
        too_large = b"{" + b" " * (64 * 1024) + b"}"
        for method, path, data, status in [
            ("GET", "/nowhere", None, 404),
            ("GET", "/commands/two", None, 405),
            ("POST", "/commands/two", too_large, 413),
            ("GET", "/commands", None, 500),
        ]:
            async with http.request(
                method, f"{base}{path}", data=data, headers=headers
            ) as response:
                assert response.status == status, path
                assert response.content_type == "application/problem+json", path
                problem = await response.json(content_type=None)
                allow = response.headers.get("Allow")
            assert (problem["status"], problem["title"]) == (status, HTTPStatus(status).phrase)
            assert problem["detail"]
            if status == 405:
                assert allow == "POST"
        await downstream.drain()
    assert receiver.received == []


async def test_sqs_messages_use_the_attribute_key_once() -> None:
    receiver = CallbackReceiver()
    async with simulator(receiver) as (downstream, _, callbacks, _http):
        body = command(callbacks, key="process-1:command-one")
        message: Any = {
            "MessageId": "m1",
            "ReceiptHandle": "r1",
            "Body": json.dumps(body),
            "MessageAttributes": {
                "Idempotency-Key": {"DataType": "String", "StringValue": body["idempotency_key"]}
            },
        }
        downstream._take_message(message)
        redelivery: Any = {**message, "MessageId": "m2"}  # SQS delivers at least once
        downstream._take_message(redelivery)
        downstream._take_message({"MessageId": "m3", "ReceiptHandle": "r3", "Body": "not json"})
        await downstream.drain()
    assert [c["status"] for c in receiver.received] == ["succeeded"]


def job(key: str, lease: int | None = None) -> Job:
    return Job(
        command=DownstreamCommand.model_validate(command("http://api", key)),
        via="http",
        received_at=datetime.now(UTC),
        fence=Fence("resource", lease) if lease is not None else None,
        delay=3.0,
    )


def test_work_and_leases_survive_a_restart_until_the_callback_is_delivered(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.jsonl"
    book = WorkBook(path)
    book.take(job("process-1:command-one", lease=4))
    book.take(job("process-2:command-one"))
    book.worked("process-1:command-one", {"status": "succeeded"})
    book.attempted("process-1:command-one", None)
    book.finished("process-2:command-one")
    book.close()

    again = WorkBook(path)
    [unfinished] = again.unfinished()
    assert unfinished.key == "process-1:command-one"
    assert unfinished.payload == {"status": "succeeded"}  # resent as it was made
    assert (unfinished.callback_attempts, unfinished.delay) == (1, 3.0)
    assert "process-2:command-one" in again.jobs  # done, and still a known key
    assert again.fences.highest == {"resource": 4}
    again.close()
    # Opening compacts: one line per lease and per job.
    assert len(path.read_text().splitlines()) == 3


def test_a_cut_off_last_entry_is_dropped_and_the_journal_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    book = WorkBook(path)
    book.take(job("process-1:command-one"))
    book.close()
    with path.open("ab") as file:
        file.write(b'{"kind":"done","key":"process-1:comm')  # killed mid-write

    book = WorkBook(path)
    assert [j.key for j in book.unfinished()] == ["process-1:command-one"]
    book.finished("process-1:command-one")
    book.close()
    assert list(WorkBook(path).unfinished()) == []


def test_command_body_matches_what_the_activities_send() -> None:
    parsed = DownstreamCommand.model_validate(command("http://api"))
    assert parsed.idempotency_key == "process-1:command-two"


# -- the inbox ------------------------------------------------------------------------------------


def approval_notification(process_id: str, message_id: str = "m-1") -> dict[str, Any]:
    """An SNS notification as delivered to SQS, carrying the activity's real mail text."""
    now = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    request = PublishApprovalRequest(
        process_id=process_id,
        requested_by="alice <script>",
        description="deploy v2",
        requested_at=now,
        deadline=now + timedelta(hours=1),
    )
    approve, reject = approval_links("http://127.0.0.1:8080", "abc.def.ghi")
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "Subject": approval_subject(process_id),
        "Message": approval_body(request, approve, reject),
        "Timestamp": "2026-01-02T03:04:05.000Z",
    }


def test_inbox_reads_links_from_the_approval_mail() -> None:
    message = InboxMessage.from_sns(approval_notification("process-42"))
    assert message.process_id == "process-42"
    assert message.approve_url == "http://127.0.0.1:8080/approvals/abc.def.ghi"
    assert message.reject_url == "http://127.0.0.1:8080/approvals/abc.def.ghi?decision=reject"
    assert message.received_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def named_notification(process_id: str, approver: Approver, message_id: str) -> dict[str, Any]:
    """A named approver's reminder as the notify_approvers activity publishes it."""
    now = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    notice = NotifyApprovers(
        process_id=process_id,
        requested_by="grace",
        description="deploy v2",
        requested_at=now,
        deadline=now + timedelta(hours=1),
        kind="reminder",
        sequence=1,
        to=(approver,),
    )
    approve, reject = approval_links("http://127.0.0.1:8080", f"tok-{approver.id}")
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "Subject": approval_subject(process_id, "reminder"),
        "Message": approval_body(notice, approve, reject, to=approver),
        "Timestamp": "2026-01-02T03:04:05.000Z",
        "MessageAttributes": {
            "approver": {"Type": "String", "Value": approver.id},
            "kind": {"Type": "String", "Value": "reminder"},
        },
    }


async def test_inbox_shows_which_approver_each_mail_went_to() -> None:
    inbox = Inbox(InboxSettings(echo=False))
    inbox.receive(named_notification("process-7", Approver(id="a@x", name="Al <i>"), "m-a"))
    inbox.receive(named_notification("process-7", Approver(id="b@x"), "m-b"))
    inbox.receive(approval_notification("process-7", "m-shared"))

    mine = inbox.mailbox.messages("process-7", approver="a@x")
    assert [(m.approver, m.to, m.kind) for m in mine] == [("a@x", "Al <i> <a@x>", "reminder")]
    assert mine[0].approve_url == "http://127.0.0.1:8080/approvals/tok-a@x"
    shared = inbox.mailbox.messages("process-7")[0]  # newest first
    assert (shared.approver, shared.to) == (None, None)
    page = render_page(inbox.mailbox.messages())
    assert "to Al &lt;i&gt; &lt;a@x&gt;, received" in page
    assert "to b@x, received" in page
    async with serving(create_inbox_app(inbox)) as base, aiohttp.ClientSession() as http:
        query = {"process_id": "process-7", "approver": "b@x"}
        async with http.get(f"{base}/messages.json", params=query) as r:
            messages = (await r.json())["messages"]
    assert [(m["approver"], m["kind"]) for m in messages] == [("b@x", "reminder")]


def test_mailbox_is_newest_first_without_duplicates_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "inbox.jsonl"
    mailbox = Mailbox(limit=10, path=path)
    first = InboxMessage.from_sns(approval_notification("process-1", "m-1"))
    second = InboxMessage.from_sns(approval_notification("process-2", "m-2"))
    assert mailbox.add(first) and mailbox.add(second)
    assert not mailbox.add(first)
    assert [m.process_id for m in mailbox.messages()] == ["process-2", "process-1"]
    reloaded = Mailbox(limit=10, path=path)
    assert [m.message_id for m in reloaded.messages()] == ["m-2", "m-1"]
    assert [m.message_id for m in reloaded.messages("process-1")] == ["m-1"]


def test_page_escapes_text_and_links_the_urls() -> None:
    page = render_page([InboxMessage.from_sns(approval_notification("process-1"))])
    assert "alice &lt;script&gt;" in page and "<script>" not in page
    assert '<a href="http://127.0.0.1:8080/approvals/abc.def.ghi">' in page
    assert 'href="http://127.0.0.1:8080/approvals/abc.def.ghi?decision=reject"' in page


async def test_inbox_serves_json_and_html(capsys: pytest.CaptureFixture[str]) -> None:
    inbox = Inbox(InboxSettings(echo=True))
    inbox.receive(approval_notification("process-1", "m-1"))
    inbox.receive(approval_notification("process-1", "m-1"))  # a redelivery: shown once
    inbox.receive(approval_notification("process-2", "m-2"))
    printed = capsys.readouterr().out
    assert printed.count("New mail: Approval requested: process-1") == 1
    assert "Approve: http://127.0.0.1:8080/approvals/abc.def.ghi" in printed

    async with serving(create_inbox_app(inbox)) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/messages.json", params={"process_id": "process-1"}) as r:
            messages = (await r.json())["messages"]
        assert [m["process_id"] for m in messages] == ["process-1"]
        assert messages[0]["approve_url"].endswith("/approvals/abc.def.ghi")
        async with http.get(f"{base}/") as r:
            assert r.status == 200
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
            assert "Approval requested: process-2" in await r.text()


def test_inbox_drops_a_message_nested_too_deeply(caplog: pytest.LogCaptureFixture) -> None:
    inbox = Inbox(InboxSettings(echo=False))
    deep: Any = {"MessageId": "m-deep", "ReceiptHandle": "r", "Body": "[" * 30_000}
    inbox._take_notification(deep)  # raised, it would end the consumer and the process
    inbox._take_notification({"MessageId": "m-1", "Body": json.dumps(approval_notification("p"))})
    assert [m.message_id for m in inbox.mailbox.messages()] == ["m-1"]
    assert "dropping message m-deep: nested too deeply" in caplog.text
