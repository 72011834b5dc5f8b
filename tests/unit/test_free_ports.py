"""The tests' free ports stay out of the kernel's ephemeral range (tests/support/moto_server.py)."""

from __future__ import annotations

import random
import socket

import pytest

from tests.support import moto_server
from tests.support.moto_server import PICKED_PORTS_FROM, _ephemeral_ports, free_loopback_port


def test_a_free_port_is_below_the_ephemeral_range_and_can_be_bound() -> None:
    # In the range, any outgoing connection of any process could take it before the caller binds.
    low, high = _ephemeral_ports()
    assert PICKED_PORTS_FROM < low <= high
    for _ in range(20):
        port = free_loopback_port()
        assert PICKED_PORTS_FROM <= port < low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_process_never_gets_the_same_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stack's ports are picked one after another and bound later: test_end_to_end once got
    # the same port for the API and the metrics. The draw here repeats its first port.
    first, other = free_loopback_port(), free_loopback_port()
    draws = iter([first, first, other])
    monkeypatch.setattr(moto_server, "_HANDED_OUT", set(), raising=False)
    monkeypatch.setattr(random, "randrange", lambda *_: next(draws))
    assert [free_loopback_port(), free_loopback_port()] == [first, other]
