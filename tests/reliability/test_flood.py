"""Connection floods against the real node process (no [security] section: the defaults), with dcmtk's echoscu
and storescu as the modality that must still get through while the flood is held.

The flood comes from other loopback addresses (Linux routes all of 127.0.0.0/8 to lo) so that the per-host limit
is what stops it and the sender on 127.0.0.1 is not the flood's neighbour; a flood from 100 distinct addresses
shows that the negotiating-connection bound (oldest dropped first) keeps the door open without a per-host limit.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from node_fakes import cr_dataset, write_cr
from peers import NodeProcess, echoscu, storescu
from secured import node_with

pytestmark = pytest.mark.integration

# What the flood sends after connecting, in turn: nothing, 4 bytes of a 6-byte PDU header (the reader then waits
# for the rest), and an A-ASSOCIATE-RQ header announcing 64 KiB of which 10 bytes come.
PAYLOADS = (b"", b"\x01\x00\x00\x00", b"\x01\x00\x00\x01\x00\x00" + b"\x00" * 10)


class Flood:
    """Holds ``n`` connections to the node open from ``sources``, re-opening within ``recheck`` seconds any the
    node closes, as an attacker that wants them held would."""

    def __init__(self, port: int, sources: list[str], n: int = 100, recheck: float = 0.25) -> None:
        self.port, self.sources, self.n, self.recheck = port, sources, n, recheck
        self.sockets: list[socket.socket | None] = [None] * n
        self.reopened = 0
        self.failed_connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="flood", daemon=True)

    def _open(self, i: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.sources[i % len(self.sources)], 0))
        sock.settimeout(1.0)
        try:
            sock.connect(("127.0.0.1", self.port))
            if PAYLOADS[i % len(PAYLOADS)]:
                sock.sendall(PAYLOADS[i % len(PAYLOADS)])
        except OSError:
            self.failed_connects += 1
            sock.close()
            self.sockets[i] = None
            return
        self.sockets[i] = sock

    def start(self) -> "Flood":
        for i in range(self.n):
            self._open(i)
        self._thread.start()
        return self

    def open_count(self) -> int:
        return sum(s is not None for s in self.sockets)

    def _hold(self) -> None:
        while not self._stop.wait(self.recheck):
            for i, sock in enumerate(self.sockets):
                if self._stop.is_set():
                    return
                if sock is not None:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if not readable:
                        continue
                    try:
                        if sock.recv(4096):
                            continue  # an A-ASSOCIATE-RJ or A-ABORT before the close: still open for now
                    except OSError:
                        pass
                    sock.close()
                    self.sockets[i] = None
                self.reopened += 1
                self._open(i)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            if sock is not None:
                sock.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = node_with(tmp_path_factory.mktemp("flood") / "node", "", quiet_seconds=30).start(timeout=60)
    yield proc
    proc.stop()


def closed_by_node(node: NodeProcess) -> dict[str, int]:
    text = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", headers=node.api_headers(), timeout=10).text
    return {m[0]: int(float(m[1])) for m in re.findall(r'ainode_dicom_connections_closed_total\{reason="([^"]+)"\} (\S+)', text)}


def served_while_flooded(node: NodeProcess, sources: list[str], cr: Path, label: str, hold: float = 8.0) -> None:
    """echoscu then storescu, again and again, for ``hold`` seconds from the moment the flood is up."""
    before = closed_by_node(node)
    flood = Flood(node.port, sources).start()
    t0 = time.monotonic()
    rounds: list[tuple[float, float, int, int, int]] = []  # (echo done at, store done at, rcs, flood open)
    try:
        while time.monotonic() - t0 < hold:
            echo = echoscu(node.port)
            t_echo = time.monotonic() - t0
            store = storescu(node.port, [cr])
            t_store = time.monotonic() - t0
            rounds.append((t_echo, t_store, echo.returncode, store.returncode, flood.open_count()))
            assert echo.returncode == 0, echo.stdout + echo.stderr
            assert store.returncode == 0, store.stdout + store.stderr
            time.sleep(0.5)
    finally:
        flood.stop()
    after = closed_by_node(node)
    closed = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
    latencies = [rounds[0][1]] + [r[1] - prev[1] - 0.5 for prev, r in zip(rounds, rounds[1:])]
    print(f"{label}: echoscu served {rounds[0][0]:.1f} s and storescu {rounds[0][1]:.1f} s after 100 flood "
          f"connections were up; {len(rounds)} echoscu+storescu rounds in {hold:.0f} s, all succeeded, slowest round "
          f"{max(latencies):.1f} s; flood connections open at each round: min {min(r[4] for r in rounds)} of 100; "
          f"the flood re-opened {flood.reopened} connections the node had closed; node closed/refused: {closed}")
    assert rounds[0][1] <= 10
    assert min(r[4] for r in rounds) >= 90, "the flood was not held while the sender was served"


def test_flood_from_one_host(node: NodeProcess, tmp_path: Path) -> None:
    cr = write_cr(tmp_path / "cr.dcm", cr_dataset("flood-one", 1))
    served_while_flooded(node, ["127.0.0.2"], cr, "flood from one host")


def test_flood_from_100_hosts(node: NodeProcess, tmp_path: Path) -> None:
    cr = write_cr(tmp_path / "cr.dcm", cr_dataset("flood-many", 1))
    served_while_flooded(node, [f"127.0.1.{i}" for i in range(1, 101)], cr, "flood from 100 hosts")
