"""The connection book's decisions (per-host limit, the oldest negotiating connection dropped for a new one,
association slots for established associations only) and the throttled log, on socket pairs."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from node.dicom_server import ConnectionBook, ConnectionLimits, ThrottledLog


def book(per_host: int = 2, pending: int = 3, associations: int = 2) -> ConnectionBook:
    return ConnectionBook(ConnectionLimits(5.0, 60.0, per_host, pending, associations))


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_per_host_limit_counts_open_connections() -> None:
    b = book(per_host=2)
    (a1, _), (a2, _), (a3, _) = pair(), pair(), pair()
    c1, _ = b.open(a1, "10.0.0.1", 0.0)
    c2, _ = b.open(a2, "10.0.0.1", 0.1)
    assert c1 is not None and c2 is not None
    assert b.open(a3, "10.0.0.1", 0.2) == (None, None)
    other, _ = b.open(a3, "10.0.0.2", 0.2)
    assert other is not None
    b.close(c1)
    again, _ = b.open(pair()[0], "10.0.0.1", 0.3)
    assert again is not None
    assert b.stats().closed == {"per-host-limit": 1}


def test_oldest_negotiating_connection_makes_room_and_is_shut() -> None:
    b = book(per_host=10, pending=2)
    (s1, peer1), (s2, _), (s3, _) = pair(), pair(), pair()
    c1, _ = b.open(s1, "h", 0.0)
    c2, _ = b.open(s2, "h", 1.0)
    assert c1 is not None and c2 is not None and b.admit(c2)  # admitted: no longer a candidate
    c3, evicted = b.open(s3, "h", 2.0)
    assert evicted is None and c3 is not None  # c1 and c3 negotiate: within the bound of 2
    _, evicted = b.open(pair()[0], "h", 3.0)
    assert evicted is c1 and c1.dropped
    peer1.settimeout(1)
    assert peer1.recv(1) == b""  # the node's side was shut: the peer sees the close
    assert b.stats().negotiating == 2 and b.stats().closed == {"evicted": 1}


def test_association_slots_are_for_admitted_connections_only() -> None:
    b = book(per_host=10, pending=10, associations=2)
    conns = [b.open(pair()[0], "h", float(i))[0] for i in range(4)]
    assert all(c is not None for c in conns)
    c = [x for x in conns if x is not None]
    assert b.admit(c[0]) and b.admit(c[1]) and not b.admit(c[2])
    assert b.admit(c[0])  # asking twice takes one slot
    b.close(c[0])
    assert b.admit(c[2])
    assert b.stats().associations == 2 and b.stats().open == 3


def test_throttled_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(interval=0.2)
    with caplog.at_level(logging.WARNING, logger="node.dicom_server"):
        for _ in range(5):
            throttled.warning("k", "refused %s", "10.0.0.1")
        time.sleep(0.25)
        throttled.warning("k", "refused %s", "10.0.0.1")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["refused 10.0.0.1", "refused 10.0.0.1 (4 more like this in the last 0.2 s)"]


def test_library_filter_throttles_pynetdicom_templates_only() -> None:
    from node.dicom_server import ThrottledLibraryLog

    f = ThrottledLibraryLog(interval=60)

    def record(name: str, msg: str, args: tuple[object, ...] = ()) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    assert f.filter(record("pynetdicom.dul", "PDU shorter (%d of %d bytes)", (16, 65542)))
    assert not f.filter(record("pynetdicom.dul", "PDU shorter (%d of %d bytes)", (4, 6)))
    assert f.filter(record("pynetdicom.acse", "Rejecting Association"))
    assert all(f.filter(record("node.listener", "instance of study %s re-sent", ("x",))) for _ in range(3))
