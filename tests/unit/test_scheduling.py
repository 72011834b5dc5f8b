"""The order xdist hands the tests out in: longest first (tests/support/scheduling.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.support.scheduling import longest_first, unit_of


@dataclass
class FakeItem:
    nodeid: str
    marks: list[pytest.Mark] = field(default_factory=list)

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((m for m in self.marks if m.name == name), None)


def item(nodeid: str, *marks: pytest.MarkDecorator) -> FakeItem:
    return FakeItem(nodeid, [m.mark for m in marks])


def test_the_longest_go_first_and_the_rest_keep_their_order() -> None:
    items = [
        item("a"),
        item("short", pytest.mark.duration(5)),
        item("b"),
        item("long", pytest.mark.duration(40)),
        item("c"),
    ]
    longest_first(items)
    assert [i.nodeid for i in items] == ["long", "short", "a", "b", "c"]


def test_a_group_goes_as_one_unit_with_the_sum_of_its_tests() -> None:
    stack = pytest.mark.xdist_group("stack")
    items = [
        item("alone", pytest.mark.duration(25)),
        item("first-of-group", stack, pytest.mark.duration(20)),
        item("unmarked"),
        item("second-of-group", stack, pytest.mark.duration(10)),
        item("third-of-group", stack),
    ]
    longest_first(items)
    # 20 + 10 > 25: the whole group first, its tests in their order, side by side.
    assert [i.nodeid for i in items] == [
        "first-of-group",
        "second-of-group",
        "third-of-group",
        "alone",
        "unmarked",
    ]


def test_this_session_hands_out_the_longest_first(request: pytest.FixtureRequest) -> None:
    # The hook in tests/conftest.py is what orders a real run: in the whole suite, the tests
    # with a duration come first, longest first (run alone, this file has none: nothing to see).
    items = request.session.items
    seconds: dict[str, float] = {}
    for i in items:
        for mark in i.iter_markers("duration"):
            seconds[unit_of(i)] = seconds.get(unit_of(i), 0.0) + float(mark.args[0])
    order = [seconds.get(unit_of(i), 0.0) for i in items]
    assert order == sorted(order, reverse=True)
