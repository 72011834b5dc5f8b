"""The order pytest-xdist hands the tests out in: the longest first.

Each xdist worker takes the next test (or the next whole group) as it runs low, so a test that
takes 40 s and happens to come last keeps one worker busy while the other has long finished.
Handed out longest first, the long tests overlap at the start and the many short ones even out
the end (the "longest processing time first" rule of scheduling).

A test says how long it takes with ``@pytest.mark.duration(seconds)``: about what it takes on a
quiet 2-core machine, only for tests of 5 s or more. It is a hint for the order, never asserted.
A group (``xdist_group``) runs on one worker, so it counts as one unit with the sum of its tests.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol, TypeVar

import pytest


class Scheduled(Protocol):
    """What the ordering reads of a collected test (``pytest.Item`` has both)."""

    @property
    def nodeid(self) -> str: ...

    def get_closest_marker(self, name: str) -> pytest.Mark | None: ...


S = TypeVar("S", bound=Scheduled)


def unit_of(item: Scheduled) -> str:
    """What xdist hands out as one piece: the test's group, or the test alone."""
    group = item.get_closest_marker("xdist_group")
    if group is not None:
        return str(group.args[0] if group.args else group.kwargs.get("name", "default"))
    return item.nodeid


def longest_first(items: list[S]) -> None:
    """Reorder ``items`` in place: the units expected to take longest first, the rest as they were.

    The sort is stable, so tests without a duration keep the collection order, and a group's
    tests (all with the group's sum) stay side by side.
    """
    seconds: dict[str, float] = defaultdict(float)
    for item in items:
        marker = item.get_closest_marker("duration")
        if marker is not None:
            seconds[unit_of(item)] += float(marker.args[0])
    items.sort(key=lambda item: -seconds.get(unit_of(item), 0.0))
