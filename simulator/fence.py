"""The fence a command carries: the lock's resource and lease id, so late holders are refused.

A process sends its commands while it holds the lock on a resource, under a lease id the mutex
only ever raises (a fencing token, as in Kleppmann's "How to do distributed locking"). A
downstream system remembers the highest lease id it has seen per resource and refuses a command
with a lower one: such a command comes from a holder whose lease was revoked or has passed on,
and running it would overlap the current holder's work.

Where the fence travels (shared with ``activities/commands.py``; the names do not change):

- HTTP: headers ``Lock-Resource`` and ``Lock-Lease``, and body fields ``lock_resource`` and
  ``lease_id``;
- SQS: message attributes ``Lock-Resource`` (String) and ``Lock-Lease`` (Number), and the same
  body fields.

Commands sent before fencing existed carry none of them; they are taken unfenced.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RESOURCE_HEADER = "Lock-Resource"
LEASE_HEADER = "Lock-Lease"
RESOURCE_FIELD = "lock_resource"
LEASE_FIELD = "lease_id"

MAX_LEASE = 2**63 - 1  # what a signed 64-bit column holds
MAX_RESOURCE_LENGTH = 256
_DIGITS = re.compile(r"[0-9]{1,19}")


class MalformedFence(ValueError):
    """The fence is there but unusable; the message says why, in one line."""


@dataclass(frozen=True)
class Fence:
    resource: str
    lease_id: int


@dataclass(frozen=True)
class Refusal:
    """Why a command was refused: a newer lease of its resource was seen."""

    resource: str
    lease_id: int
    highest: int

    @property
    def message(self) -> str:
        return (
            f"fenced: lease {self.lease_id} of resource {self.resource!r} is below the highest "
            f"lease seen, {self.highest}; a newer lock holder has taken over"
        )


class Fences:
    """The highest lease id seen per resource."""

    def __init__(self, highest: Mapping[str, int] | None = None) -> None:
        self.highest: dict[str, int] = dict(highest or {})

    def refusal(self, fence: Fence) -> Refusal | None:
        """The refusal of ``fence``, or None when its lease is the highest yet (or equal)."""
        highest = self.highest.get(fence.resource)
        if highest is not None and fence.lease_id < highest:
            return Refusal(fence.resource, fence.lease_id, highest)
        return None

    def observe(self, fence: Fence) -> None:
        if fence.lease_id > self.highest.get(fence.resource, -1):
            self.highest[fence.resource] = fence.lease_id


def parse_fence(
    envelope: Mapping[str, str], body: Mapping[str, Any], envelope_names: str
) -> Fence | None:
    """The fence from a command's envelope (headers or attributes, as text) and its body.

    None when neither carries one. Both may: then they must agree. ``envelope_names`` says what
    the envelope is ("header", "message attribute") in error messages.
    """
    outside = _fence(
        envelope.get(RESOURCE_HEADER),
        _lease_from_text(envelope.get(LEASE_HEADER), f"{LEASE_HEADER} {envelope_names}"),
        f"{RESOURCE_HEADER} and {LEASE_HEADER} {envelope_names}s",
    )
    inside = _fence(
        body.get(RESOURCE_FIELD),
        _lease_from_json(body.get(LEASE_FIELD)),
        f"body fields {RESOURCE_FIELD} and {LEASE_FIELD}",
    )
    if outside is not None and inside is not None and outside != inside:
        raise MalformedFence(
            f"the {envelope_names}s say lease {outside.lease_id} of {outside.resource!r}, "
            f"the body lease {inside.lease_id} of {inside.resource!r}"
        )
    return outside or inside


def _fence(resource: Any, lease_id: int | None, names: str) -> Fence | None:
    if resource is None and lease_id is None:
        return None
    if resource is None or lease_id is None:
        raise MalformedFence(f"the {names} go together: one of them is missing")
    if not isinstance(resource, str) or not resource.strip():
        raise MalformedFence(f"the lock resource must be a non-empty string ({names})")
    if len(resource) > MAX_RESOURCE_LENGTH:
        raise MalformedFence(f"the lock resource is longer than {MAX_RESOURCE_LENGTH} characters")
    return Fence(resource, lease_id)


def _lease_from_text(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if not _DIGITS.fullmatch(text) or int(text) > MAX_LEASE:
        raise MalformedFence(f"the {name} must be a whole number from 0 to {MAX_LEASE}: {text!r}")
    return int(text)


def _lease_from_json(value: Any) -> int | None:
    if value is None:
        return None
    # bool is an int in Python; true is no lease id.
    if type(value) is not int or not 0 <= value <= MAX_LEASE:
        raise MalformedFence(
            f"the body field {LEASE_FIELD} must be a whole number from 0 to {MAX_LEASE}: {value!r}"
        )
    return value
