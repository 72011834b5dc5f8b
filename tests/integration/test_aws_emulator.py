"""``make run``'s AWS emulator keeps what it acknowledged through a kill -9.

Writers hammer the emulator (a real process) with puts, updates and deletes, each writer on its
own items so the acknowledged order is known; the emulator is killed mid-stream, started again
on the same journal, and every acknowledged write must be there. The same for SQS: a message
sent and not deleted comes back with its attributes, one deleted does not, and the queues,
topic and subscription are there again.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from common.journal import EXIT_JOURNAL_FAILED
from local_stack.children import Child
from tests.support.moto_server import free_loopback_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

WRITERS = 4
ACKNOWLEDGED_BEFORE_KILL = 200
COMPACT_AFTER = 50  # small, so the journal is compacted several times while the writers run
MESSAGING_JOURNAL = "messaging-journal.jsonl"


@dataclass
class Emulator:
    child: Child
    port: int

    def client(self, service: str = "dynamodb") -> Any:
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=f"http://127.0.0.1:{self.port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # One try each: a call that returned is acknowledged, one that raised is not.
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
        )

    async def kill(self) -> None:
        """kill -9, as a crash or the OOM killer would."""
        self.child.kill()
        await self.child.exited()


# ``python -m local_stack.aws_emulator`` under a file size limit (RLIMIT_FSIZE, in bytes): a write
# past it fails with EFBIG, as one on a full disk fails with ENOSPC. Python ignores SIGXFSZ, so
# the write fails instead of killing the process.
UNDER_A_FILE_SIZE_LIMIT = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))\n"
    "from local_stack.aws_emulator import main\n"
    "main(sys.argv[2:])\n"
)


@asynccontextmanager
async def emulator(
    journal: Path, log: Path, file_size_limit: int | None = None
) -> AsyncIterator[Emulator]:
    """``python -m local_stack.aws_emulator`` on a free port, answering."""
    port = free_loopback_port()
    if file_size_limit is None:
        command = [sys.executable, "-m", "local_stack.aws_emulator"]
    else:
        command = [sys.executable, "-c", UNDER_A_FILE_SIZE_LIMIT, str(file_size_limit)]
    child = Child(
        "moto",
        [
            *command,
            "-p",
            str(port),
            "--journal",
            str(journal),
            "--messaging-journal",
            str(journal.with_name(MESSAGING_JOURNAL)),
            "--compact-after",
            str(COMPACT_AFTER),
        ],
        # No bytecode written under the limit: CPython writes a .pyc with one write(2) and does not
        # check its length, so the venv would be left with .pyc files cut at the limit.
        {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
        log,
        sys.stderr,
        echo=False,
    )
    await child.start()
    running = Emulator(child, port)

    async def answering() -> bool:
        if child.returncode is not None:
            raise AssertionError("emulator exited:\n" + "\n".join(child.tail()))
        try:
            await asyncio.to_thread(running.client().list_tables)
        except Exception:
            return False
        return True

    try:
        await eventually(answering, "the emulator answers")
        yield running
    finally:
        await child.stop(grace=10)


@dataclass
class Acknowledged:
    """What each writer was told succeeded."""

    puts: dict[str, int] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    last: dict[int, int] = field(default_factory=dict)
    # The delete each writer had sent and not heard back about: it may or may not have landed.
    deleting: dict[int, str] = field(default_factory=dict)
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: str, n: int) -> None:
        with self.lock:
            self.puts[key] = n
            self.count += 1

    def updated(self, writer: int, n: int) -> None:
        with self.lock:
            self.last[writer] = n
            self.count += 1

    def deleted(self, writer: int, key: str) -> None:
        with self.lock:
            self.deletes.add(key)
            self.deleting.pop(writer, None)
            self.count += 1


def write_until_refused(
    client: Any, table: str, writer: int, acked: Acknowledged, stop: threading.Event
) -> None:
    """Put item n, set this writer's last = n, delete item n-1 every other time; until an error."""
    n = 0
    try:
        while not stop.is_set():
            key = f"w{writer}-{n}"
            client.put_item(TableName=table, Item={"k": {"S": key}, "v": {"N": str(n)}})
            acked.put(key, n)
            client.update_item(
                TableName=table,
                Key={"k": {"S": f"w{writer}-last"}},
                UpdateExpression="SET v = :n",
                ExpressionAttributeValues={":n": {"N": str(n)}},
            )
            acked.updated(writer, n)
            if n % 2 == 0 and n > 0:
                gone = f"w{writer}-{n - 1}"
                acked.deleting[writer] = gone
                client.delete_item(TableName=table, Key={"k": {"S": gone}})
                acked.deleted(writer, gone)
            n += 1
    except Exception:
        return  # the emulator was killed: what was acknowledged so far is the record


async def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    journal, log = tmp_path / "dynamodb-journal.jsonl", tmp_path / "moto.log"
    table = "processes"
    acked = Acknowledged()
    stop = threading.Event()

    async with emulator(journal, log) as running:
        setup = running.client()
        setup.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        setup.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
        )
        writers = [
            threading.Thread(
                target=write_until_refused,
                args=(running.client(), table, i, acked, stop),
                daemon=True,
            )
            for i in range(WRITERS)
        ]
        for thread in writers:
            thread.start()
        await eventually(
            lambda: acked.count >= ACKNOWLEDGED_BEFORE_KILL, "writes acknowledged", within=60
        )
        await running.kill()  # while the writers are still writing
        stop.set()
        for thread in writers:
            await asyncio.to_thread(thread.join, 15)

    # Compaction ran while the writes came in, so it is covered too.
    assert "journal compacted" in await asyncio.to_thread(log.read_text)
    with acked.lock:
        puts, deletes, last = dict(acked.puts), set(acked.deletes), dict(acked.last)
        in_doubt = set(acked.deleting.values())

    async with emulator(journal, tmp_path / "moto-again.log") as running:
        reader = running.client()
        items: dict[str, int] = {}
        pages = reader.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        for page in pages:
            for item in page["Items"]:
                items[item["k"]["S"]] = int(item["v"]["N"])
        ttl = reader.describe_time_to_live(TableName=table)["TimeToLiveDescription"]

    assert ttl["TimeToLiveStatus"] == "ENABLED"
    missing = {k: v for k, v in puts.items() if k not in deletes | in_doubt and items.get(k) != v}
    assert missing == {}, f"{len(missing)} acknowledged puts lost"
    assert deletes.isdisjoint(items), "an acknowledged delete came back"
    for writer, n in last.items():
        # The update after the last acknowledged one may have landed without its answer.
        assert items[f"w{writer}-last"] in (n, n + 1)


# What a process's command one carries (activities/commands.py), and a binary attribute besides.
COMMAND_ATTRIBUTES: dict[str, Any] = {
    "Idempotency-Key": {"DataType": "String", "StringValue": "process-1:command-one"},
    "Lock-Resource": {"DataType": "String", "StringValue": "approval-commands"},
    "Lock-Lease": {"DataType": "Number", "StringValue": "7"},
    "traceparent": {
        "DataType": "String",
        "StringValue": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    },
    "Blob": {"DataType": "Binary", "BinaryValue": bytes(range(256))},
}


def everything_visible(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Receive every visible message (no long poll: what is there is answered at once)."""
    received: list[dict[str, Any]] = []
    while True:
        page = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=600,  # each received once here
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not page:
            return received
        received.extend(page)


async def test_queued_messages_topics_and_subscriptions_survive_kill_9(tmp_path: Path) -> None:
    journal = tmp_path / "dynamodb-journal.jsonl"
    async with emulator(journal, tmp_path / "moto.log") as running:
        sqs, sns = running.client("sqs"), running.client("sns")
        commands = sqs.create_queue(QueueName="commands", Attributes={"VisibilityTimeout": "45"})[
            "QueueUrl"
        ]
        sent = sqs.send_message(
            QueueUrl=commands,
            MessageBody='{"command": "command-one"}',
            MessageAttributes=COMMAND_ATTRIBUTES,
        )["MessageId"]

        # Taken and deleted (one alone, one in a batch), taken and not deleted, purged.
        other = sqs.create_queue(QueueName="other")["QueueUrl"]
        sqs.send_message_batch(
            QueueUrl=other,
            Entries=[
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(
                    ["deleted-alone", "deleted-in-batch", "received-not-deleted"]
                )
            ],
        )
        taken = {m["Body"]: m for m in everything_visible(sqs, other)}
        assert set(taken) == {"deleted-alone", "deleted-in-batch", "received-not-deleted"}
        sqs.delete_message(QueueUrl=other, ReceiptHandle=taken["deleted-alone"]["ReceiptHandle"])
        deleted = sqs.delete_message_batch(
            QueueUrl=other,
            Entries=[{"Id": "0", "ReceiptHandle": taken["deleted-in-batch"]["ReceiptHandle"]}],
        )
        assert [e["Id"] for e in deleted["Successful"]] == ["0"]
        purged = sqs.create_queue(QueueName="purged")["QueueUrl"]
        sqs.send_message(QueueUrl=purged, MessageBody="purged-before-the-kill")
        sqs.purge_queue(QueueUrl=purged)

        # SNS hands a publish to its SQS subscriptions inside moto, not over HTTP.
        topic = sns.create_topic(Name="approvals")["TopicArn"]
        inbox = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        subscription = sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)[
            "SubscriptionArn"
        ]
        sns.publish(TopicArn=topic, Message="approve me", Subject="approval")

        await running.kill()  # nobody has received the command, nor the notification

    async with emulator(journal, tmp_path / "moto-again.log") as running:
        sqs, sns = running.client("sqs"), running.client("sns")
        [command] = everything_visible(sqs, commands)
        assert command["MessageId"] == sent
        assert command["Body"] == '{"command": "command-one"}'
        assert command["MessageAttributes"] == COMMAND_ATTRIBUTES
        visibility = sqs.get_queue_attributes(
            QueueUrl=commands, AttributeNames=["VisibilityTimeout"]
        )["Attributes"]
        assert visibility == {"VisibilityTimeout": "45"}
        # At least once, as SQS: received and not deleted comes back; deleted never does.
        assert [m["Body"] for m in everything_visible(sqs, other)] == ["received-not-deleted"]
        assert everything_visible(sqs, purged) == []

        [notification] = everything_visible(sqs, inbox)
        assert json.loads(notification["Body"])["Message"] == "approve me"
        listed = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
        assert [s["SubscriptionArn"] for s in listed] == [subscription]
        sns.publish(TopicArn=topic, Message="after the restart")  # no subscribing again
        [later] = everything_visible(sqs, inbox)
        assert json.loads(later["Body"])["Message"] == "after the restart"

    # The start compacted the journal: what was deleted or purged is not in it any more.
    kept = (tmp_path / MESSAGING_JOURNAL).read_text()
    assert sent in kept and "received-not-deleted" in kept
    for gone in ("deleted-alone", "deleted-in-batch", "purged-before-the-kill"):
        assert gone not in kept


# Room for the table and a few dozen writes; the journals start empty.
JOURNAL_ROOM = 8192


async def test_a_write_that_cannot_be_journaled_stops_the_emulator_unanswered(
    tmp_path: Path,
) -> None:
    """The journal cannot take a DynamoDB write moto already made (a full disk): the emulator
    exits without answering, and the restart holds exactly the writes it acknowledged. It used
    to answer 500 and serve on, readers seeing a write that the restart no longer had."""
    journal, log = tmp_path / "dynamodb-journal.jsonl", tmp_path / "moto.log"
    table = "processes"
    acknowledged: set[str] = set()
    async with emulator(journal, log, file_size_limit=JOURNAL_ROOM) as running:
        client = running.client()
        client.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        refused: Exception | None = None
        for n in range(JOURNAL_ROOM // 100):
            try:
                item = {"k": {"S": f"item-{n}"}, "v": {"S": "x" * 200}}
                await asyncio.to_thread(client.put_item, TableName=table, Item=item)
            except Exception as err:
                refused = err
                break
            acknowledged.add(f"item-{n}")
        assert refused is not None, "the journal never filled up"
        # No answer at all: not an error answer (a ClientError), which a reader's view betrays.
        assert not isinstance(refused, ClientError), refused
        assert await running.child.exited() == EXIT_JOURNAL_FAILED
    assert "cannot journal a change already made" in await asyncio.to_thread(log.read_text)

    async with emulator(journal, tmp_path / "moto-again.log") as running:
        pages = running.client().get_paginator("scan").paginate(TableName=table)
        kept = {item["k"]["S"] for page in pages for item in page["Items"]}
    assert kept == acknowledged


async def test_a_message_that_cannot_be_journaled_stops_the_emulator_unanswered(
    tmp_path: Path,
) -> None:
    """The same for SQS: a send moto queued and the journal cannot take is never answered; the
    restart has every message acknowledged, and that one not."""
    journal, log = tmp_path / "dynamodb-journal.jsonl", tmp_path / "moto.log"
    acknowledged: list[str] = []
    async with emulator(journal, log, file_size_limit=JOURNAL_ROOM) as running:
        sqs = running.client("sqs")
        queue = sqs.create_queue(QueueName="commands")["QueueUrl"]
        refused: Exception | None = None
        for n in range(JOURNAL_ROOM // 100):
            try:
                body = f"command {n} " + "x" * 200
                await asyncio.to_thread(sqs.send_message, QueueUrl=queue, MessageBody=body)
            except Exception as err:
                refused = err
                break
            acknowledged.append(body)
        assert refused is not None, "the journal never filled up"
        assert not isinstance(refused, ClientError), refused
        assert await running.child.exited() == EXIT_JOURNAL_FAILED

    async with emulator(journal, tmp_path / "moto-again.log") as running:
        kept = [m["Body"] for m in everything_visible(running.client("sqs"), queue)]
    assert sorted(kept) == sorted(acknowledged)
