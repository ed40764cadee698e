"""Status endpoints: /healthz follows the checks and says what a failing one found, /metrics is Prometheus text
from the database (with the checks and the node's gauges), /api/studies lists studies with study_uid and status
and never a patient identifier."""

from __future__ import annotations

from pathlib import Path

import httpx

from node.localpeers.orthanc import free_port
from node.store import JobPlan, Store
from node.web import start_web
from test_store import inst

TOKEN = "k" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_endpoints(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    store = Store(db)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "no new instance for 10 s", [JobPlan("p", "1", ("1.1",))], now=2.0)
    store.claim_job("w", 60, now=3.0)
    checks: dict[str, bool | str] = {"database": True, "worker": False}
    port = free_port()
    gauges = {"ainode_spool_free_bytes": ("bytes free", 1234.0)}
    server = start_web("127.0.0.1", port, lambda: Store(db), lambda: dict(checks), gauges=lambda: gauges,
                       token=TOKEN)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 503
        checks["worker"] = True
        assert httpx.get(f"{base}/healthz").json() == {"ok": True, "checks": checks}
        checks["queue_moving"] = "a job has waited 400 s to be claimed"
        degraded = httpx.get(f"{base}/healthz")
        assert degraded.status_code == 503 and degraded.json()["checks"]["queue_moving"].startswith("a job has")
        assert 'ainode_health_check{check="queue_moving"} 0.0' in httpx.get(f"{base}/metrics", headers=AUTH).text
        del checks["queue_moving"]
        studies = httpx.get(f"{base}/api/studies", headers=AUTH).json()
        assert studies[0]["study_uid"] == "1.2.3" and studies[0]["status"] == "processing"
        job = studies[0]["jobs"][0]
        assert job["state"] == "running" and studies[0]["completed_reason"] == "no new instance for 10 s"
        assert job["runs"][0]["covers"] == ["1.1"] and job["runs"][0]["state"] == "running"
        assert studies[0]["reason"] == "processing: p" and job["reason"] == "running (1)"
        assert "SYN-1" not in httpx.get(f"{base}/api/studies", headers=AUTH).text
        metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
        assert 'ainode_jobs{state="running"} 1.0' in metrics
        assert "ainode_job_inference_seconds_bucket" in metrics
        assert 'ainode_health_check{check="database"} 1.0' in metrics and "ainode_spool_free_bytes 1234.0" in metrics
        assert httpx.get(f"{base}/nope", headers=AUTH).status_code == 404
    finally:
        server.shutdown()


def test_token_guards_everything_but_healthz(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    Store(db)
    port = free_port()
    server = start_web("127.0.0.1", port, lambda: Store(db), lambda: {"database": True}, token="t" * 32)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        for path in ("/api/studies", "/metrics", "/nope"):
            r = httpx.get(f"{base}{path}")
            assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
            assert httpx.get(f"{base}{path}", headers={"Authorization": "Bearer " + "x" * 32}).status_code == 401
            assert httpx.get(f"{base}{path}", headers={"Authorization": "t" * 32}).status_code == 401  # no scheme
        ok = {"Authorization": "Bearer " + "t" * 32}
        assert httpx.get(f"{base}/api/studies", headers=ok).json() == []
        assert httpx.get(f"{base}/metrics", headers=ok).status_code == 200
        assert httpx.get(f"{base}/nope", headers=ok).status_code == 404
    finally:
        server.shutdown()


def test_https_handshake_is_not_on_the_accept_loop(tmp_path: Path) -> None:
    import socket
    import ssl

    from node.config import HttpSecuritySettings
    from node.tls import http_context
    from pki import make_pki

    pki = make_pki(tmp_path / "pki")
    context = http_context(HttpSecuritySettings(cert_file=pki.server.cert, key_file=pki.server.key))
    db = tmp_path / "node.db"
    Store(db)
    port = free_port()
    server = start_web("127.0.0.1", port, lambda: Store(db), lambda: {"database": True}, ssl_context=context)
    silent = socket.create_connection(("127.0.0.1", port))  # connects, never says hello
    try:
        trust = ssl.create_default_context(cafile=str(pki.ca))
        assert httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=3).status_code == 200
    finally:
        silent.close()
        server.shutdown()


def test_metrics_count_deliveries_per_destination(tmp_path: Path) -> None:
    from node.config import RESULT_KINDS
    from node.store import DeliveryRoute
    from test_outbox import queued

    store = queued(tmp_path, routes=[DeliveryRoute("pacs", frozenset(RESULT_KINDS)),
                                     DeliveryRoute("archive", frozenset({"sr"}))])
    store.outbox_sent("archive/9.1")
    port = free_port()
    server = start_web("127.0.0.1", port, lambda: Store(tmp_path / "db"), lambda: {"database": True}, token=TOKEN)
    try:
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=AUTH).text
        assert 'ainode_deliveries{destination="pacs",state="pending"} 2.0' in metrics
        assert 'ainode_deliveries{destination="archive",state="sent"} 1.0' in metrics
    finally:
        server.shutdown()
