"""Throw-away certificates for the TLS tests, made with the openssl command line in the test's temp dir: a CA that
the node trusts, a server and a client certificate it signed, and a second CA with a client certificate the node
must refuse. Nothing here is ever committed or reused between runs.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate the node trusts for clients, and clients trust for the node
    server: KeyPair  # for 127.0.0.1 / localhost, signed by ca
    client: KeyPair  # signed by ca
    untrusted_client: KeyPair  # signed by another CA


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key), "-out", str(pair.cert),
             "-days", "2", "-subj", f"/CN=dicom-ai-node test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    pair.key.chmod(0o600)
    return pair


def _leaf(folder: Path, name: str, ca: KeyPair, usage: str, san: str | None = None) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    csr = folder / f"{name}.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key), "-out", str(csr),
             "-subj", f"/CN=dicom-ai-node test {name}")
    ext = folder / f"{name}.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                   f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-out", str(pair.cert), "-days", "2", "-extfile", str(ext))
    pair.key.chmod(0o600)
    return pair


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    rogue = _ca(folder, "rogue-ca")
    return Pki(
        ca=ca.cert,
        server=_leaf(folder, "server", ca, "serverAuth", "IP:127.0.0.1,DNS:localhost"),
        client=_leaf(folder, "client", ca, "clientAuth"),
        untrusted_client=_leaf(folder, "untrusted-client", rogue, "clientAuth"),
    )
