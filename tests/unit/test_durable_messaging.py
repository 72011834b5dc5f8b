"""The emulator's messaging journal, on moto's backends in this process (no server, no HTTP).

A "restart" here is: close the journal, wipe moto's memory, open the journal again. The real
process under kill -9 is tests/integration/test_aws_emulator.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from moto.core.base_backend import BackendDict
from moto.sns.models import sns_backends
from moto.sqs.models import sqs_backends

from local_stack.durable_messaging import DurableMessaging, Messaging

ACCOUNT, REGION = "123456789012", "eu-west-1"


@pytest.fixture(autouse=True)
def empty_moto() -> Iterator[None]:
    BackendDict.reset()
    yield
    BackendDict.reset()


@contextmanager
def running(path: Path, compact_after: int = 10_000) -> Iterator[DurableMessaging]:
    """One life of the emulator: moto starts empty, the journal fills it."""
    BackendDict.reset()
    durable = DurableMessaging.open(path, compact_after)
    try:
        yield durable
    finally:
        durable.close()


def sqs() -> Any:
    return sqs_backends[ACCOUNT][REGION]


def take_all(queue: str) -> list[Any]:
    return list(sqs().receive_message(queue, 10, 0, 600))


def test_only_what_was_not_deleted_comes_back_and_the_journal_stays_small(
    tmp_path: Path,
) -> None:
    path = tmp_path / "messaging.jsonl"
    with running(path, compact_after=5):
        sqs().create_queue("q")
        ids = [sqs().send_message("q", f"m{i}").id for i in range(20)]
        taken: list[Any] = []
        while batch := take_all("q"):
            taken.extend(batch)
        for message in taken[1:]:
            sqs().delete_message("q", message.receipt_handle)
        # Compacted as it grew: fewer entries than the 40 changes made.
        assert len(path.read_text().splitlines()) < 1 + 20 + 19

    with running(path) as durable:
        assert durable.restored["messages"] == 1
        [back] = take_all("q")
        assert (back.id, back.body) == (ids[0], "m0")
        assert len(path.read_text().splitlines()) == 2


def test_a_fifo_duplicate_is_answered_but_not_kept_twice(tmp_path: Path) -> None:
    path = tmp_path / "messaging.jsonl"
    with running(path):
        sqs().create_queue("q.fifo", FifoQueue="true")
        for _ in range(2):
            sqs().send_message("q.fifo", "once", deduplication_id="d", group_id="g")
    with running(path):
        assert [m.body for m in take_all("q.fifo")] == ["once"]


def test_a_deleted_topic_takes_its_subscriptions_and_a_purge_its_messages(
    tmp_path: Path,
) -> None:
    path = tmp_path / "messaging.jsonl"
    with running(path):
        sns = sns_backends[ACCOUNT][REGION]
        sqs().create_queue("kept", VisibilityTimeout="45")
        sqs().create_queue("purged")
        sqs().send_message("purged", "gone")
        sqs().purge_queue("purged")
        queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:kept"
        kept = sns.create_topic("kept")
        subscription = sns.subscribe(kept.arn, queue_arn, "sqs")
        sns.set_subscription_attributes(subscription.arn, "RawMessageDelivery", "true")
        dropped = sns.create_topic("dropped")
        sns.subscribe(dropped.arn, queue_arn, "sqs")
        sns.delete_topic(dropped.arn)

    with running(path):
        sns = sns_backends[ACCOUNT][REGION]
        assert list(sns.topics) == [kept.arn]
        assert list(sns.subscriptions) == [subscription.arn]
        assert sns.subscriptions[subscription.arn].attributes["RawMessageDelivery"] == "true"
        assert sqs().get_queue("kept").visibility_timeout == 45
        assert take_all("purged") == []
        # Raw delivery kept: a publish reaches the queue as the bare message.
        sns.publish("raw", kept.arn)
        assert [m.body for m in take_all("kept")] == ["raw"]


def test_the_fold_ignores_what_names_nothing() -> None:
    state = Messaging()
    queue = {"account": ACCOUNT, "region": REGION, "queue": "q"}
    state.apply({"op": "send", **queue, "id": "1"})  # before its queue: moto would refuse it
    state.apply({"op": "delete", **queue, "id": "2"})
    state.apply({"op": "something-new"})
    assert state.count() == 0
