"""Ports: real sockets held by "other processes" (listeners in this test) and the daemon's book."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from supervisor.ports import PortAllocator, PortInUse, free_port, is_free


@pytest.fixture
def listener() -> Iterator[int]:
    """A foreign server on a free port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_is_free_sees_a_listener(listener: int) -> None:
    assert not is_free("127.0.0.1", listener)
    assert not is_free("0.0.0.0", listener)  # a wildcard server would collide too


def test_time_wait_does_not_count_as_busy() -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end goes to TIME_WAIT
        client.close()
    assert is_free("127.0.0.1", port)


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert is_free("127.0.0.1", port)


def test_assign_fixed_port_held_by_another_process(listener: int) -> None:
    ports = PortAllocator()
    with pytest.raises(PortInUse, match=f"port {listener} is already in use by another process"):
        ports.assign("web.1", listener, auto=False)
    assert ports.owner_of(listener) is None


def test_assign_auto_moves_past_a_busy_preferred_port(listener: int) -> None:
    ports = PortAllocator()
    port = ports.assign("web.1", listener, auto=True)
    assert port != listener
    assert ports.owner_of(port) == "web.1"


def test_assign_prefers_a_free_preferred_port() -> None:
    ports = PortAllocator()
    wanted = free_port()
    assert ports.assign("web.1", wanted, auto=True) == wanted
    other = free_port()
    assert ports.assign("web.2", other, auto=False) == other


def test_booking_prevents_double_assignment() -> None:
    ports = PortAllocator()
    port = ports.assign("web.1", free_port(), auto=False)  # booked, nothing bound yet

    with pytest.raises(PortInUse, match=f"port {port} is already assigned to web.1"):
        ports.assign("web.2", port, auto=False)
    assert ports.assign("web.2", port, auto=True) != port

    ports.release("web.1")
    assert ports.owner_of(port) is None
    assert ports.assign("web.3", port, auto=False) == port


def test_fresh_avoids_booked_and_given_ports() -> None:
    ports = PortAllocator()
    booked = {ports.fresh(f"web.{i}", set()) for i in range(20)}
    assert len(booked) == 20
    avoid = {free_port() for _ in range(5)}
    port = ports.fresh("web.1#2", avoid)
    assert port not in booked and port not in avoid
    assert ports.owner_of(port) == "web.1#2"

    ports.release("web.1#2")
    assert ports.owner_of(port) is None
    assert ports.owner_of(next(iter(booked))) is not None


def test_assign_needs_a_port_or_auto() -> None:
    with pytest.raises(ValueError):
        PortAllocator().assign("web.1", None, auto=False)
    assert PortAllocator().assign("web.1", None, auto=True) > 0
