"""The tests' free ports stay out of the kernel's ephemeral range (tests/support/moto_server.py)."""

from __future__ import annotations

import socket

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
