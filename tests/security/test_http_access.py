"""The status endpoints of the real node process with [security.http]: HTTPS with a certificate from the test's CA,
and a bearer token that every endpoint but /healthz wants (httpx as the client, verifying against that CA).
"""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

import httpx
import pytest

from pki import make_pki
from secured import node_with, secret_file

pytestmark = pytest.mark.integration


def test_token_and_https(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    token = secrets.token_hex(32)
    token_file = secret_file(tmp_path / "api-token", token + "\n")
    node = node_with(tmp_path / "node", f'\n[security.http]\ntoken_file = "{token_file}"\n'
                     f'cert_file = "{pki.server.cert}"\nkey_file = "{pki.server.key}"\n')
    trust = ssl.create_default_context(cafile=str(pki.ca))
    base = f"https://127.0.0.1:{node.http_port}"

    def ready() -> bool:
        assert node.proc is None or node.proc.poll() is None, node.log.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/healthz", verify=trust, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    node._ready = ready  # type: ignore[method-assign]  # the helper's check speaks plain HTTP
    node.start(timeout=60)
    try:
        codes: dict[str, int] = {}
        with httpx.Client(verify=trust, timeout=10) as client:
            codes["/healthz"] = client.get(f"{base}/healthz").status_code
            for path in ("/api/studies", "/metrics"):
                codes[f"{path} without token"] = client.get(f"{base}{path}").status_code
                codes[f"{path} wrong token"] = client.get(
                    f"{base}{path}", headers={"Authorization": "Bearer " + "0" * 64}).status_code
                codes[f"{path} with token"] = client.get(
                    f"{base}{path}", headers={"Authorization": f"Bearer {token}"}).status_code
            studies = client.get(f"{base}/api/studies", headers={"Authorization": f"Bearer {token}"}).json()
        assert codes["/healthz"] == 200 and studies == []
        for path in ("/api/studies", "/metrics"):
            assert codes[f"{path} without token"] == 401 and codes[f"{path} wrong token"] == 401
            assert codes[f"{path} with token"] == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=5)  # plain HTTP on the HTTPS port
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=5)  # the system's CAs do not know the test CA
        assert token not in node.log.read_text()
    finally:
        node.stop()
    print("HTTP: " + ", ".join(f"{k} {v}" for k, v in codes.items())
          + "; plain HTTP and an unknown CA refused; the token is not in the node's log")
