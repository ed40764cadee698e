"""Watchdog: a study or job that has not moved within its state's time is resumed or failed with the reason,
never left where it is; a job waiting for its re-opened study is not stuck."""

from __future__ import annotations

from pathlib import Path

from node.assembler import Assembler
from node.store import JobPlan, Store
from node.watchdog import Watchdog
from test_store import inst

from node_fakes import TO_PACS, settings


def make(tmp_path: Path) -> tuple[Store, Watchdog]:
    s = settings(tmp_path, assembly={"quiet_seconds": 2.0},
                 watchdog={"receiving_grace_seconds": 10.0, "job_stuck_seconds": 100.0})
    store = Store(tmp_path / "db")
    assembler = Assembler(store, s, lambda name: "1")
    return store, Watchdog(store, s, lambda uid, why: assembler.complete(uid, why))


def test_a_study_left_receiving_is_completed_with_the_reason(tmp_path: Path) -> None:
    store, watchdog = make(tmp_path)
    store.index_instance(inst("1.1"), now=100.0)
    assert watchdog.tick(now=105.0) == []  # within quiet + grace: the assembler's business
    actions = watchdog.tick(now=113.0)
    assert len(actions) == 1 and "completed study" in actions[0]
    study = store.study("1.2.3")
    assert study is not None and study["state"] == "processing" and "watchdog" in study["completed_reason"]


def test_a_job_never_started_or_never_finished_is_failed_with_the_reason(tmp_path: Path) -> None:
    store, watchdog = make(tmp_path)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
    store.db.execute("UPDATE jobs SET updated_at = 0")
    actions = watchdog.tick(now=1000.0)
    assert any("failed job" in a for a in actions)
    job = store.job("1.2.3/p")
    study = store.study("1.2.3")
    assert job is not None and job["state"] == "failed" and "never started" in job["error"]
    assert study is not None and study["state"] == "failed"


def test_a_running_job_past_its_time_is_failed_and_its_run_closed(tmp_path: Path) -> None:
    store, watchdog = make(tmp_path)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
    job = store.claim_job("w", lease_seconds=10_000, now=3.0)
    assert job is not None
    store.db.execute("UPDATE jobs SET updated_at = 0")
    watchdog.tick(now=1000.0)
    assert store.job("1.2.3/p")["state"] == "failed"  # type: ignore[index]
    assert store.run(job["run_id"])["state"] == "failed"  # type: ignore[index]


def test_a_sending_job_without_pending_deliveries_is_settled(tmp_path: Path) -> None:
    from node.store import RunOutcome

    store, watchdog = make(tmp_path)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.finish_run(job["run_id"], RunOutcome("d", (("9.1", "8.1", "sr", "/r/sr.dcm"),), False,
                     {"timings": {}, "fhir_status": "ok", "n_findings": 0, "inputs_missing": [], "sr_sop_uid": "9.1"}),
                     TO_PACS)
    # the delivery was recorded but the job's transition was lost (e.g. an older version's bug): repaired
    store.db.execute("UPDATE outbox SET state = 'sent'")
    store.db.execute("UPDATE jobs SET updated_at = 0")
    watchdog.tick(now=1000.0)
    assert store.job("1.2.3/p")["state"] == "sent"  # type: ignore[index]
    assert store.study("1.2.3")["state"] == "sent"  # type: ignore[index]


def test_a_job_waiting_for_its_reopened_study_is_not_stuck(tmp_path: Path) -> None:
    store, watchdog = make(tmp_path)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
    store.index_instance(inst("1.2"), now=3.0)  # re-opened before the job started
    store.db.execute("UPDATE jobs SET updated_at = 0")
    store.db.execute("UPDATE studies SET last_received_at = 995")
    assert watchdog.tick(now=1000.0) == []
    assert store.job("1.2.3/p")["state"] == "queued"  # type: ignore[index]
