"""The listener's deadlines and limits with small values, in process, with dcmtk's echoscu as the sender: a
connection that does not negotiate in time is closed at the deadline whether it is silent, sends half a header or
trickles a byte at a time; only established associations count against max_associations, and the one over it is
refused "local limit exceeded" rather than left hanging.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dicom_server import Listeners
from node.listener import ListenerDeps, Spool, start_listener
from node.store import Store
from node_fakes import settings
from peers import echoscu

pytestmark = pytest.mark.integration


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[tuple[int, Listeners]]:
    s = settings(tmp_path, security={"associate_timeout_seconds": 1.0, "max_associations": 2})
    data = s.node.data_dir
    server = start_listener(s.node, ListenerDeps(Spool(data / "spool"), lambda: Store(data / "node.db")), s.security)
    try:
        yield s.node.port, server
    finally:
        server.shutdown()


def closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.0, limit: float = 10.0) -> float:
    """Seconds until the node closes ``sock``, sending ``trickle`` a byte at a time meanwhile."""
    t0 = time.monotonic()
    sock.settimeout(every or limit)
    sent = 0
    while time.monotonic() - t0 < limit:
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            pass
        except OSError:
            return time.monotonic() - t0
        if trickle:
            try:
                sock.send(trickle[sent % len(trickle):][:1])
            except OSError:
                return time.monotonic() - t0
            sent += 1
    return float("inf")


def test_connections_that_do_not_negotiate_are_closed_at_the_deadline(listener: tuple[int, Listeners]) -> None:
    port, _ = listener
    header = b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 200  # an A-ASSOCIATE-RQ announcing 256 bytes
    results = {}
    for label, first, trickle in (("silent", b"", b""), ("half a header", header[:4], b""),
                                  ("a byte every 0.2 s", b"", header)):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(first)
        results[label] = closed_after(sock, trickle, every=0.2 if trickle else 0.0)
        sock.close()
    print("deadline 1 s: closed after " + ", ".join(f"{k} {v:.1f} s" for k, v in results.items()))
    assert all(0.8 <= t <= 3.0 for t in results.values()), results


def hold(port: int) -> Association:
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    return assoc


def settled(server: Listeners, associations: int) -> None:
    deadline = time.monotonic() + 5
    while server.book.stats().associations > associations and time.monotonic() < deadline:
        time.sleep(0.05)


def test_only_established_associations_count(listener: tuple[int, Listeners]) -> None:
    port, server = listener
    idle = [socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0)) for _ in range(10)]
    try:
        assert echoscu(port).returncode == 0, "idle connections must not take association slots"
        settled(server, 0)  # echoscu's association is counted until its thread has finished the release
        held = [hold(port), hold(port)]
        refused = echoscu(port)
        assert refused.returncode != 0 and "Local Limit Exceeded" in refused.stdout + refused.stderr
        held.pop().release()
        settled(server, 1)
        assert echoscu(port).returncode == 0
        held.pop().release()
    finally:
        for sock in idle:
            sock.close()
    print("max_associations = 2: echoscu served beside 10 idle connections; refused 'Local Limit Exceeded' with 2 "
          "associations held; served again once one was released")
