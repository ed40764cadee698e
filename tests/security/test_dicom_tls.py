"""DICOM over TLS on the real node process, with dcmtk (echoscu/storescu +tls) and the openssl client as peers:
required mode refuses plain associations, clients without a certificate and clients whose certificate another CA
signed, and serves a trusted one; TLS below 1.2 and suites outside BCP 195 are refused; a silent client does not
hold up others (the handshake is not on the accept loop); optional mode keeps plain DICOM beside a TLS port.
Certificates are made for each run in the test's temp dir (tests/support/pki.py).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from node.localpeers.orthanc import free_port
from node_fakes import cr_dataset, write_cr
from peers import TOOL_ENV, NodeProcess
from pki import KeyPair, Pki, make_pki
from secured import node_with, stored

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_toml(pki: Pki, extra: str = "") -> str:
    return (f'\n[security.tls]\ncert_file = "{pki.server.cert}"\nkey_file = "{pki.server.key}"\n'
            f'ca_file = "{pki.ca}"\n{extra}')


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[NodeProcess]:
    proc = node_with(tmp_path_factory.mktemp("tls") / "node", tls_toml(pki)).start(timeout=60)
    yield proc
    proc.stop()


def dcmtk(tool: str, port: int, pki: Pki, client: KeyPair | None | str, *files: Path) -> tuple[int, str]:
    """Run echoscu/storescu; ``client`` a key pair (+tls), "anonymous" (TLS without a certificate) or None (plain)."""
    if client is None:
        tls: list[str] = []
    elif client == "anonymous":
        tls = ["+tla", "+cf", str(pki.ca)]
    else:
        assert isinstance(client, KeyPair)
        tls = ["+tls", str(client.key), str(client.cert), "+cf", str(pki.ca)]
    done = subprocess.run([tool, "-d", *tls, "-aet", "MODALITY", "-aec", "AINODE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, env=TOOL_ENV, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_required_tls_refuses_plain_and_untrusted_and_serves_trusted(node: NodeProcess, pki: Pki,
                                                                     tmp_path: Path) -> None:
    refused = []
    for label, client in (("plain", None), ("no client certificate", "anonymous"),
                          ("certificate of another CA", pki.untrusted_client)):
        ds = cr_dataset(f"tls-{label}", 1)
        rc, out = dcmtk("storescu", node.port, pki, client, write_cr(tmp_path / f"{label.replace(' ', '-')}.dcm", ds))
        assert rc != 0, f"{label}: {out[-2000:]}"
        assert stored(node, str(ds.StudyInstanceUID)) == 0
        refused.append(label)
    trusted = cr_dataset("tls-trusted", 1)
    t0 = time.monotonic()
    rc, out = dcmtk("storescu", node.port, pki, pki.client, write_cr(tmp_path / "trusted.dcm", trusted))
    took = time.monotonic() - t0
    assert rc == 0, out[-3000:]
    assert stored(node, str(trusted.StudyInstanceUID)) == 1
    protocol = re.search(r"Protocol\s*:\s*(\S+)", out)
    suite = re.search(r"Ciphersuite\s*:\s*(\w+)", out)
    assert protocol is not None and suite is not None, out[-3000:]
    print(f"TLS required: storescu refused for {', '.join(refused)} (nothing stored); trusted client stored in "
          f"{took:.2f} s over {protocol.group(1)}, {suite.group(1)}")


def openssl_client(port: int, pki: Pki, *options: str) -> str:
    done = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca),
                           "-cert", str(pki.client.cert), "-key", str(pki.client.key), *options],
                          input="", capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def test_protocol_and_cipher_floor(node: NodeProcess, pki: Pki) -> None:
    old = openssl_client(node.port, pki, "-tls1_1")
    assert "Cipher is (NONE)" in old
    weak = openssl_client(node.port, pki, "-tls1_2", "-cipher", "AES128-SHA")  # RSA key exchange, CBC: not BCP 195
    assert "Cipher is (NONE)" in weak
    good = openssl_client(node.port, pki, "-tls1_2")
    line = next(x for x in good.splitlines() if "Cipher is" in x)
    assert "ECDHE-RSA-AES128-GCM-SHA256" in line or "ECDHE-RSA-AES256-GCM-SHA384" in line, line
    print(f"TLS floor: TLS 1.1 refused, TLS 1.2 AES128-SHA refused, TLS 1.2 gets '{line.strip()}'")


def test_silent_clients_do_not_hold_up_the_handshake_of_others(node: NodeProcess, pki: Pki) -> None:
    silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(10)]
    try:
        t0 = time.monotonic()
        rc, out = dcmtk("echoscu", node.port, pki, pki.client)
        took = time.monotonic() - t0
    finally:
        for sock in silent:
            sock.close()
    assert rc == 0, out[-2000:]
    assert took < 3
    print(f"TLS with 10 silent connections open: echoscu served in {took:.2f} s")


def test_optional_tls_keeps_plain_beside_a_tls_port(tmp_path: Path, pki: Pki) -> None:
    tls_port = free_port()
    proc = node_with(tmp_path / "node", tls_toml(pki, f"required = false\nport = {tls_port}\n")).start(timeout=60)
    try:
        assert dcmtk("echoscu", proc.port, pki, None)[0] == 0
        assert dcmtk("echoscu", tls_port, pki, pki.client)[0] == 0
        assert dcmtk("echoscu", tls_port, pki, None)[0] != 0
        assert dcmtk("echoscu", tls_port, pki, pki.untrusted_client)[0] != 0
    finally:
        proc.stop()
    print(f"TLS optional: plain echoscu served on {proc.port}, TLS echoscu on {tls_port}; plain and untrusted "
          "refused on the TLS port")
