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


def test_endpoints(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    store = Store(db)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "no new instance for 10 s", [JobPlan("p", "1", ("1.1",))], now=2.0)
    store.claim_job("w", 60, now=3.0)
    checks: dict[str, bool | str] = {"database": True, "worker": False}
    port = free_port()
    gauges = {"ainode_spool_free_bytes": ("bytes free", 1234.0)}
    server = start_web("127.0.0.1", port, lambda: Store(db), lambda: dict(checks), lambda: gauges)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 503
        checks["worker"] = True
        assert httpx.get(f"{base}/healthz").json() == {"ok": True, "checks": checks}
        checks["queue_moving"] = "a job has waited 400 s to be claimed"
        degraded = httpx.get(f"{base}/healthz")
        assert degraded.status_code == 503 and degraded.json()["checks"]["queue_moving"].startswith("a job has")
        assert 'ainode_health_check{check="queue_moving"} 0.0' in httpx.get(f"{base}/metrics").text
        del checks["queue_moving"]
        studies = httpx.get(f"{base}/api/studies").json()
        assert studies[0]["study_uid"] == "1.2.3" and studies[0]["status"] == "processing"
        job = studies[0]["jobs"][0]
        assert job["state"] == "running" and studies[0]["completed_reason"] == "no new instance for 10 s"
        assert job["runs"][0]["covers"] == ["1.1"] and job["runs"][0]["state"] == "running"
        assert studies[0]["reason"] == "processing: p" and job["reason"] == "running (1)"
        assert "SYN-1" not in httpx.get(f"{base}/api/studies").text
        metrics = httpx.get(f"{base}/metrics").text
        assert 'ainode_jobs{state="running"} 1.0' in metrics
        assert "ainode_job_inference_seconds_bucket" in metrics
        assert 'ainode_health_check{check="database"} 1.0' in metrics and "ainode_spool_free_bytes 1234.0" in metrics
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.shutdown()
