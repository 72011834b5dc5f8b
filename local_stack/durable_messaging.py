"""The emulator's queues, their messages, topics and subscriptions, kept through any stop.

moto keeps SQS and SNS in memory. Before this, a command-one message still in the queue when the
emulator stopped (clean or kill -9) was gone at the next start: the simulator never saw it, and
its process waited out its whole callback wait holding the lock. Now every change is written to a
journal (``common/journal.py``), fsynced before moto's call returns, so before anyone hears it
succeeded; at start the journal is replayed into moto before the emulator serves.

Journaled at moto's backends, not over HTTP as the DynamoDB writes are (``aws_emulator.py``):

- SNS delivers to an SQS subscription by calling the SQS backend's ``send_message`` inside the
  Publish; the message never crosses HTTP as a SendMessage. A hook on ``send_message`` sees it,
  as it sees SendMessage and each entry of SendMessageBatch;
- DeleteMessage names a receipt handle, which means nothing after a restart; the backend knows
  which message it belongs to, so the journal says which message went (DeleteMessageBatch deletes
  each entry through the same call);
- both SQS protocols (query and JSON) and every client end in the same calls.

What is kept: queues as created plus their later SetQueueAttributes; every message sent and not
deleted, purged or deleted with its queue, with its id, body, message attributes (the commands'
``Idempotency-Key``, ``Lock-Resource``, ``Lock-Lease``, ``traceparent``), system attributes,
group and deduplication ids, and what is left of its delay; topics with their attributes;
subscriptions with their ARNs and attributes. A message comes back visible, as SQS delivers: at
least once. One received and not deleted before the stop is received again (its receive count
starts over), so a consumer must take repeats, as every SQS consumer must.

Not kept: queue tags and permissions changed after creation, a message moved to a dead-letter
queue by a receive (it returns to its first queue; no queue here has a redrive policy), SNS
platform applications and SMS settings.

At start, and as the journal grows, it is compacted: rewritten as the entries that make what is
left, so deleted messages drop out.

A change that cannot be journaled (a full disk) stops the emulator at once, unanswered, as for
DynamoDB (``common.journal.fail_stop``): the restart has exactly what the journal holds. Receives
take no lock (a long poll waits inside moto), so a receive in the instant between a send and its
failed journaling can take that message; its sender heard nothing and sends it again, a repeat
that consumers take anyway (at least once).
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from common.journal import Entry, Journal, fail_stop

log = logging.getLogger("aws_emulator")

COMPACT_AFTER = 10_000

QueueKey = tuple[str, str, str]  # account, region, queue name


@dataclass
class Messaging:
    """What the journal leaves standing, held as the entries that make it again, in order."""

    topics: dict[str, list[Entry]] = field(default_factory=dict)
    queues: dict[QueueKey, list[Entry]] = field(default_factory=dict)
    subscriptions: dict[str, list[Entry]] = field(default_factory=dict)
    messages: dict[QueueKey, dict[str, Entry]] = field(default_factory=dict)

    def apply(self, entry: Entry) -> None:
        """Fold one entry in; one that names what is not there changes nothing."""
        op = entry.get("op")
        if op in ("create_topic", "set_topic_attribute", "delete_topic"):
            self._topic(op, entry)
        elif op in ("subscribe", "set_subscription_attributes", "unsubscribe"):
            self._subscription(op, entry)
        elif op in ("create_queue", "set_queue_attributes", "delete_queue"):
            self._queue(op, entry)
        elif op in ("send", "delete", "purge"):
            self._message(op, entry)
        else:
            log.warning("journal: skipping an entry it does not know (%s)", op)

    def entries(self) -> Iterator[Entry]:
        """Topics, then queues (a subscription and a message need both), then the rest."""
        for made in (self.topics, self.queues, self.subscriptions):
            for entries in made.values():
                yield from entries
        for messages in self.messages.values():
            yield from messages.values()

    def count(self) -> int:
        return sum(1 for _ in self.entries())

    def _topic(self, op: str, entry: Entry) -> None:
        arn = str(entry["arn"])
        if op == "create_topic":
            self.topics.setdefault(arn, [entry])
        elif op == "set_topic_attribute" and arn in self.topics:
            self.topics[arn].append(entry)
        elif op == "delete_topic":
            self.topics.pop(arn, None)
            # moto drops a deleted topic's subscriptions with it.
            for subscription, made in list(self.subscriptions.items()):
                if made[0]["topic_arn"] == arn:
                    del self.subscriptions[subscription]

    def _subscription(self, op: str, entry: Entry) -> None:
        arn = str(entry["arn"])
        if op == "subscribe":
            self.subscriptions.setdefault(arn, [entry])
        elif op == "set_subscription_attributes" and arn in self.subscriptions:
            self.subscriptions[arn].append(entry)
        elif op == "unsubscribe":
            self.subscriptions.pop(arn, None)

    def _queue(self, op: str, entry: Entry) -> None:
        key = queue_key(entry)
        if op == "create_queue":
            self.queues.setdefault(key, [entry])
            self.messages.setdefault(key, {})
        elif op == "set_queue_attributes" and key in self.queues:
            self.queues[key].append(entry)
        elif op == "delete_queue":
            self.queues.pop(key, None)
            self.messages.pop(key, None)

    def _message(self, op: str, entry: Entry) -> None:
        messages = self.messages.get(queue_key(entry))
        if messages is None:
            return
        if op == "send":
            messages[str(entry["id"])] = entry
        elif op == "delete":
            messages.pop(str(entry["id"]), None)
        else:  # purge
            messages.clear()


def queue_key(entry: Entry) -> QueueKey:
    return (str(entry["account"]), str(entry["region"]), str(entry["queue"]))


class DurableMessaging:
    """Hooks moto's SQS and SNS backends so that each change is journaled before it returns.

    ``DurableMessaging.open(path)`` replays the journal into moto and installs the hooks; call it
    before the emulator serves, and ``close()`` at the end. The hooks are on moto's backend
    classes, so they cover every account and region. One lock orders the changes: a message's
    delete can only be journaled after its send, never before it.
    """

    def __init__(
        self,
        journal: Journal,
        compact_after: int,
        on_journal_failure: Callable[[Path, OSError], NoReturn] = fail_stop,
    ) -> None:
        self._journal = journal
        self._on_journal_failure = on_journal_failure
        self._compact_after = compact_after
        self._state = Messaging()
        self._lock = threading.RLock()  # re-entered: an SNS publish sends to SQS inside it
        self._originals: dict[str, Callable[..., Any]] = {}
        self._hooked: dict[type, tuple[str, ...]] = {}
        self._compacted_size = 0

    @classmethod
    def open(cls, path: Path, compact_after: int = COMPACT_AFTER) -> DurableMessaging:
        from moto.sns.models import SNSBackend
        from moto.sqs.models import SQSBackend

        journal, entries = Journal.open(path)
        durable = cls(journal, compact_after)
        for entry in entries:
            durable._state.apply(entry)
        hooks: dict[type, tuple[str, ...]] = {
            SQSBackend: (
                "create_queue",
                "set_queue_attributes",
                "delete_queue",
                "send_message",
                "delete_message",
                "purge_queue",
            ),
            SNSBackend: (
                "create_topic",
                "set_topic_attribute",
                "delete_topic",
                "subscribe",
                "set_subscription_attributes",
                "unsubscribe",
            ),
        }
        for backend_class, names in hooks.items():
            for name in names:
                durable._originals[name] = getattr(backend_class, name)
        durable._replay()
        durable._compact()
        for backend_class, names in hooks.items():
            for name in names:
                setattr(backend_class, name, durable._hook(getattr(durable, "_" + name)))
        durable._hooked = hooks
        return durable

    def close(self) -> None:
        """Take the hooks out and close the journal."""
        for backend_class, names in self._hooked.items():
            for name in names:
                setattr(backend_class, name, self._originals[name])
        self._journal.close()

    @property
    def restored(self) -> dict[str, int]:
        state = self._state
        return {
            "queues": len(state.queues),
            "messages": sum(len(m) for m in state.messages.values()),
            "topics": len(state.topics),
            "subscriptions": len(state.subscriptions),
        }

    # -- journaling -----------------------------------------------------------------------------

    def _hook(self, journaled: Callable[..., Any]) -> Callable[..., Any]:
        def method(backend: Any, *args: Any, **kwargs: Any) -> Any:
            # Held across moto's change and the fsync: nobody can change the same message or
            # queue in between, so the journal has the changes in the order moto made them.
            with self._lock:
                return journaled(backend, *args, **kwargs)

        return method

    def _record(self, backend: Any, op: str, **fields: Any) -> None:
        entry: Entry = {"op": op, "account": backend.account_id, "region": backend.region_name}
        entry.update(fields)
        try:
            self._journal.append(entry)
        except OSError as err:
            # moto made the change already: exit before the caller hears of it (``fail_stop``).
            self._on_journal_failure(self._journal.path, err)
        self._state.apply(entry)
        if self._journal.entries > self._compacted_size + self._compact_after:
            try:
                self._compact()
            except OSError as err:  # the entry is journaled; the old journal is still whole
                self._compacted_size = self._journal.entries
                log.warning("messaging journal not compacted (%s); it goes on growing", err)

    def _compact(self) -> None:
        before = self._journal.entries
        self._journal.rewrite(list(self._state.entries()))
        self._compacted_size = self._journal.entries
        log.info("messaging journal compacted: %d entries -> %d", before, self._journal.entries)

    # -- SQS ------------------------------------------------------------------------------------

    def _create_queue(
        self, backend: Any, name: str, tags: dict[str, str] | None = None, **attributes: Any
    ) -> Any:
        new = name not in backend.queues
        queue = self._originals["create_queue"](backend, name, tags, **attributes)
        if new:
            self._record(
                backend, "create_queue", queue=name, tags=tags or {}, attributes=attributes
            )
        return queue

    def _set_queue_attributes(self, backend: Any, queue_name: str, attributes: Any) -> Any:
        queue = self._originals["set_queue_attributes"](backend, queue_name, attributes)
        self._record(backend, "set_queue_attributes", queue=queue_name, attributes=attributes)
        return queue

    def _delete_queue(self, backend: Any, queue_name: str) -> None:
        self._originals["delete_queue"](backend, queue_name)
        self._record(backend, "delete_queue", queue=queue_name)

    def _send_message(self, backend: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        message = self._originals["send_message"](backend, queue_name, *args, **kwargs)
        # A FIFO duplicate is answered as sent but not queued: nothing to keep.
        if any(queued is message for queued in backend.get_queue(queue_name)._messages):
            self._record(
                backend,
                "send",
                queue=queue_name,
                id=message.id,
                body=message.body,
                attributes=_plain(message.message_attributes),
                system_attributes=_plain(message.system_attributes),
                group_id=message.group_id,
                deduplication_id=message.deduplication_id,
                delayed_until=message.delayed_until,  # ms since the epoch; 0 when not delayed
            )
        return message

    def _delete_message(self, backend: Any, queue_name: str, receipt_handle: str) -> None:
        queue = backend.get_queue(queue_name)
        # Looked up before the delete: afterwards the message and its handles are gone.
        ids = [m.id for m in queue._messages if m.had_receipt_handle(receipt_handle)]
        self._originals["delete_message"](backend, queue_name, receipt_handle)
        for message_id in ids:
            self._record(backend, "delete", queue=queue_name, id=message_id)

    def _purge_queue(self, backend: Any, queue_name: str) -> None:
        self._originals["purge_queue"](backend, queue_name)
        self._record(backend, "purge", queue=queue_name)

    # -- SNS ------------------------------------------------------------------------------------

    def _create_topic(
        self,
        backend: Any,
        name: str,
        attributes: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Any:
        known = set(backend.topics)
        topic = self._originals["create_topic"](backend, name, attributes, tags)
        if topic.arn not in known:
            self._record(
                backend,
                "create_topic",
                arn=topic.arn,
                name=name,
                attributes=attributes or {},
                tags=tags or {},
            )
        return topic

    def _set_topic_attribute(self, backend: Any, topic_arn: str, name: str, value: str) -> None:
        self._originals["set_topic_attribute"](backend, topic_arn, name, value)
        self._record(backend, "set_topic_attribute", arn=topic_arn, name=name, value=value)

    def _delete_topic(self, backend: Any, arn: str) -> None:
        self._originals["delete_topic"](backend, arn)
        self._record(backend, "delete_topic", arn=arn)

    def _subscribe(self, backend: Any, topic_arn: str, endpoint: str, protocol: str) -> Any:
        known = set(backend.subscriptions)
        subscription = self._originals["subscribe"](backend, topic_arn, endpoint, protocol)
        if subscription.arn not in known:
            self._record(
                backend,
                "subscribe",
                arn=subscription.arn,
                topic_arn=topic_arn,
                endpoint=endpoint,
                protocol=protocol,
            )
        return subscription

    def _set_subscription_attributes(self, backend: Any, arn: str, name: str, value: Any) -> None:
        self._originals["set_subscription_attributes"](backend, arn, name, value)
        self._record(backend, "set_subscription_attributes", arn=arn, name=name, value=value)

    def _unsubscribe(self, backend: Any, arn: str) -> None:
        self._originals["unsubscribe"](backend, arn)
        self._record(backend, "unsubscribe", arn=arn)

    # -- replay ---------------------------------------------------------------------------------

    def _replay(self) -> None:
        """Make what the journal left standing again in moto, through the unhooked calls."""
        for entry in self._state.entries():
            try:
                self._make(entry)
            except Exception as err:  # one bad entry must not cost the rest
                log.warning("messaging journal: replayed %s failed: %s", entry.get("op"), err)

    def _make(self, entry: Entry) -> None:
        from moto.sns.models import sns_backends
        from moto.sqs.models import sqs_backends

        op, account, region = str(entry["op"]), entry["account"], entry["region"]
        call = self._originals["send_message" if op == "send" else op]
        if op in ("create_queue", "set_queue_attributes", "send"):
            sqs = sqs_backends[account][region]
            if op == "create_queue":
                call(sqs, entry["queue"], entry["tags"] or None, **entry["attributes"])
            elif op == "set_queue_attributes":
                call(sqs, entry["queue"], entry["attributes"])
            else:
                self._resend(sqs, entry)
            return
        sns = sns_backends[account][region]
        if op == "create_topic":
            call(sns, entry["name"], entry["attributes"] or None, entry["tags"] or None)
        elif op in ("set_topic_attribute", "set_subscription_attributes"):
            call(sns, entry["arn"], entry["name"], entry["value"])
        elif op == "subscribe":
            subscription = call(sns, entry["topic_arn"], entry["endpoint"], entry["protocol"])
            # Keep the ARN the subscriber was given: it may unsubscribe or set attributes by it.
            if subscription.arn != entry["arn"]:
                sns.subscriptions.pop(subscription.arn, None)
                subscription.arn = entry["arn"]
                subscription.attributes["SubscriptionArn"] = entry["arn"]
                sns.subscriptions[entry["arn"]] = subscription

    def _resend(self, sqs: Any, entry: Entry) -> None:
        left_ms = float(entry.get("delayed_until") or 0) - time.time() * 1000
        message = self._originals["send_message"](
            sqs,
            entry["queue"],
            entry["body"],
            message_attributes=_restored(entry["attributes"]) or None,
            delay_seconds=max(0, math.ceil(left_ms / 1000)),
            deduplication_id=entry.get("deduplication_id"),
            group_id=entry.get("group_id"),
            system_attributes=_restored(entry["system_attributes"]) or None,
            validate_group_id=False,
        )
        message.id = entry["id"]  # the same MessageId, as SQS keeps it across deliveries


def _plain(value: Any) -> Any:
    """JSON for the journal: a Binary attribute's bytes as base64, marked as such."""
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _restored(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$base64"}:
            return base64.b64decode(value["$base64"])
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value
