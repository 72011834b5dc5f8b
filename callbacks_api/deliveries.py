"""What this API recently delivered through each link, so repeats are answered, not signalled.

Each signal the server accepts is an event in the process's history, for as long as the process
runs. The workflow keeps only the first decision and the first result per command, so signalling
a repeat changes nothing but the history's size. A link posted again and again (a downstream
system retrying, a double click, someone holding the link) would grow it without bound. So the
API remembers, per link (the process and the callback its token names), what it delivered first:

- the same message again is answered as the first time, and not sent;
- a different message is refused (only the first counts), and not sent;
- posts on one link that arrive together wait for the one in flight instead of signalling
  beside it, so a burst sends one signal. If that send fails, the posts that waited for it with
  the same message get its failure at once, each its own copy (a burst during a Temporal outage
  is answered within one call's timeout, not one timeout per post in turn); if the send was only
  cancelled (its client went away), a post with the same message tries it;
- a send that ended uncertain (no answer in time, a 503 that says "may or may not", cancelled,
  anything unexpected: the signal may have landed, and then the workflow keeps it as the first)
  leaves the link *unconfirmed*: a different message is refused 503
  ``earlier-message-unconfirmed`` and not sent, until a post of the unconfirmed message is
  answered for sure (delivered, or refused for good). Sending it would be answered 202 and
  remembered while the workflow may keep the first one, and the first one's retry would then be
  told the other "was delivered". A definite refusal (4xx, 500) of a send, or a 503 that knows
  nothing was recorded (``nothing_recorded``: no connection to Temporal could be made), leaves
  nothing unconfirmed: a different message tries. The hold lasts at most ``UNCONFIRMED_HOLD``
  (2 min): if the first message's sender gave up, the signal may never have landed, and holding
  the other message back until the link expires would lose the only result the process can
  still get. After the hold the other message is sent; the workflow keeps whichever arrived
  first.

The memory is bounded. It holds at most ``capacity`` links (least recently used dropped first),
each for no longer than its token is valid: after that the link is refused as expired anyway.
An entry keeps a digest and a short label, never the message: a callback's result can be 64 KiB.
Each replica has its own memory, so with R replicas a link is signalled at most R times while it
is remembered; the workflow ignores the extra ones. (So an unconfirmed link holds back a
different message only on the replica that saw the uncertain send.)
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cachetools import TLRUCache
from prometheus_client import Counter
from pydantic import BaseModel

from callbacks_api import problems
from callbacks_api.problems import Problem
from workflows.messages import APPROVAL_CALLBACK

# An entry takes about 0.55 KB with a 200-character label (tracemalloc, as
# tests/unit/test_deliveries.py measures it), so a full memory is about 5.5 MB.
DEFAULT_CAPACITY = 10_000
# How long an uncertain send holds back a different message on its link (see the module doc).
UNCONFIRMED_HOLD = 120.0


class Outcome(StrEnum):
    SENT = "sent"  # delivered now, by this call
    REPEAT = "repeat"  # this very message was delivered before: nothing sent
    CONFLICT = "conflict"  # a different message was delivered first: nothing sent


@dataclass(frozen=True)
class Delivered:
    digest: str
    label: str  # what a refusal may quote: "succeeded", "approved by Ada"
    expires_at: datetime  # the link's expiry; forgotten then


def digest_of(message: BaseModel) -> str:
    """The same digest for the same content, whatever order a JSON object's keys came in."""
    canonical = json.dumps(message.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _forget_at(_link: Hashable, delivered: Delivered, _now: float) -> float:
    """``TLRUCache``'s time to use, on the wall clock (the tokens' clock): the link's expiry."""
    return delivered.expires_at.timestamp()


def _hold_until(_link: Hashable, delivered: Delivered, now: float) -> float:
    """An uncertain send's hold on its link: ``UNCONFIRMED_HOLD``, never past the link's expiry."""
    return min(delivered.expires_at.timestamp(), now + UNCONFIRMED_HOLD)


class RecentDeliveries:
    """A bounded memory of the first message delivered per link, shared by one app's handlers."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
        answered: Counter | None = None,
    ) -> None:
        self._delivered: TLRUCache[Hashable, Delivered] = TLRUCache(
            capacity, ttu=_forget_at, timer=clock
        )
        # Labelled (link kind, outcome): posts answered here instead of being signalled.
        self._answered = answered
        self._in_flight: dict[Hashable, _Flight] = {}
        # Links whose last send ended uncertain, with the message it sent (see the module doc);
        # bounded like the memory itself, and held for at most UNCONFIRMED_HOLD.
        self._unconfirmed: TLRUCache[Hashable, Delivered] = TLRUCache(
            capacity, ttu=_hold_until, timer=clock
        )

    def __len__(self) -> int:
        self._delivered.expire()
        return len(self._delivered)

    def first(self, link: Hashable) -> Delivered | None:
        """What this link delivered first, while remembered; None otherwise (or still in flight)."""
        return self._delivered.get(link)

    async def deliver(
        self,
        link: tuple[str, ...],
        message: Delivered,
        send: Callable[[], Awaitable[None]],
    ) -> tuple[Outcome, Delivered]:
        """Send ``message`` unless this link already delivered one: (outcome, the first one).

        ``link`` is (process id, callback, ...). ``send`` raising means nothing is remembered,
        so the next post on the link tries again; the posts with the same message that waited
        for that send raise a copy of what it raised. After an uncertain failure, a different
        message raises 503 ``earlier-message-unconfirmed`` until the link is sure again.
        """
        while True:
            first = self._delivered.get(link)
            if first is not None:
                outcome = Outcome.REPEAT if first.digest == message.digest else Outcome.CONFLICT
                if self._answered is not None:
                    kind = "approval" if link[1] == APPROVAL_CALLBACK else "command"
                    self._answered.labels(kind, outcome.value).inc()
                return outcome, first
            flight = self._in_flight.get(link)
            if flight is None:
                unconfirmed = self._unconfirmed.get(link)
                if unconfirmed is not None and unconfirmed.digest != message.digest:
                    raise problems.earlier_message_unconfirmed()
                break
            # Another post on this link is being delivered: its outcome decides ours.
            theirs = await asyncio.shield(flight.ended)
            if theirs is not None and flight.digest == message.digest:
                # The very send this post asks for just failed. Trying it again in turn would
                # keep the Nth waiter of a burst N call timeouts long during an outage.
                raise _fresh(theirs)

        flight = _Flight(message.digest, asyncio.get_running_loop().create_future())
        self._in_flight[link] = flight
        failure: Exception | None = None
        sure = False
        try:
            await send()
            self._delivered[link] = message
            sure = True
            return Outcome.SENT, message
        except Exception as err:
            failure = err
            # A refusal for good (4xx, 500), or a 503 that knows no request reached Temporal
            # (no connection could be made), says this message was not recorded; anything else
            # (503: may or may not have arrived; unexpected) leaves it possibly delivered.
            sure = isinstance(err, Problem) and (err.status != 503 or err.nothing_recorded)
            raise
        finally:
            # Cancelled (BaseException) leaves ``sure`` False: the signal may be on its way.
            if sure:
                self._unconfirmed.pop(link, None)
            else:
                self._unconfirmed[link] = message
            del self._in_flight[link]
            # Waiters look again: delivered, failed (theirs to share), or cancelled (theirs to try).
            flight.ended.set_result(failure)


def _fresh(err: Exception) -> Exception:
    """A copy of a failed send's exception for one waiter that raises it.

    Raising the one object in every waiter would grow its traceback with each, and keep the
    sender's frames (and the request body in them) alive as long as any waiter holds it. A copy
    carries no traceback, cause or context.
    """
    try:
        return copy.copy(err)
    except Exception:  # an exception that cannot be rebuilt from its args: say what it was
        return RuntimeError(f"the send this post waited for failed: {err!r}")


@dataclass(frozen=True)
class _Flight:
    """A send under way on one link: which message, and how it ended (None: delivered or
    cancelled, else what it raised)."""

    digest: str
    ended: asyncio.Future[Exception | None]
