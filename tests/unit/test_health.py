"""/healthz progress checks on a fake clock: a run past its budgets, a queue the worker does not take, deliveries
nobody attempts each turn one check into a sentence naming it; normal waiting and backoff do not."""

from __future__ import annotations

from pathlib import Path

from node.config import BudgetSettings
from node.health import progress_checks
from node.store import JobPlan, RunOutcome, Store
from node_fakes import TO_PACS
from test_store import inst

BUDGETS = BudgetSettings(fhir_seconds=10, pipeline_seconds=60, delivery_seconds=20, stall_seconds=30)
ALL_OK = {"runs_within_budget": True, "queue_moving": True, "deliveries_on_time": True}


def two_studies(tmp_path: Path) -> Store:
    store = Store(tmp_path / "db")
    for n, study in enumerate(("1.2.3", "1.2.4"), start=1):
        store.index_instance(inst(f"{n}.1", study), now=1000.0)
        store.complete_study(study, "quiet", [JobPlan("p", "1", (f"{n}.1",))], now=1000.0)
    return store


def test_a_run_past_its_budgets_is_a_stuck_stage(tmp_path: Path) -> None:
    store = two_studies(tmp_path)
    store.claim_job("w", 900, now=1000.0)
    limit = 10 + 60 + 30
    assert progress_checks(store, BUDGETS, 1000.0 + limit) == ALL_OK  # long, queue waiting: the worker is busy
    checks = progress_checks(store, BUDGETS, 1000.0 + limit + 5)
    assert checks["runs_within_budget"] == (
        "1 run(s) running for more than 100 s (budgets.fhir_seconds + pipeline_seconds + stall_seconds), "
        "the oldest for 105 s")
    assert checks["queue_moving"] is True and checks["deliveries_on_time"] is True


def test_jobs_waiting_while_the_worker_does_nothing(tmp_path: Path) -> None:
    store = two_studies(tmp_path)
    assert progress_checks(store, BUDGETS, 1000.0 + 30) == ALL_OK
    stalled = progress_checks(store, BUDGETS, 1000.0 + 31)["queue_moving"]
    assert isinstance(stalled, str) and stalled.startswith("a job has waited 31 s to be claimed")
    # the worker takes one and finishes it: progress, so the other job's wait is not a stall yet
    job = store.claim_job("w", 900, now=1040.0)
    assert job is not None
    store.fail_run(job["run_id"], "RuntimeError: x", retry=False, now=1045.0)
    assert progress_checks(store, BUDGETS, 1070.0)["queue_moving"] is True
    assert isinstance(progress_checks(store, BUDGETS, 1076.0)["queue_moving"], str)


def test_deliveries_nobody_attempts_but_not_those_backing_off(tmp_path: Path) -> None:
    store = two_studies(tmp_path)
    job = store.claim_job("w", 900, now=1000.0)
    assert job is not None
    summary = {"timings": {}, "fhir_status": "ok", "n_findings": 0, "inputs_missing": [], "sr_sop_uid": "9.1"}
    store.finish_run(job["run_id"], RunOutcome("d", (("9.1", "8.1", "sr", "/r/sr.dcm"),), False, summary), TO_PACS,
                     now=1001.0)
    job2 = store.claim_job("w", 900, now=1001.0)  # the other study's job runs, so the queue is not the question
    assert job2 is not None
    assert progress_checks(store, BUDGETS, 1001.0 + 50)["deliveries_on_time"] is True
    overdue = progress_checks(store, BUDGETS, 1001.0 + 51)["deliveries_on_time"]
    assert overdue == "1 delivery(ies) due more than 50 s ago and not attempted (budgets.delivery_seconds + stall_seconds)"
    (item,) = store.due_outbox(now=2000.0)
    store.outbox_failed(item["item_id"], "status 0xA700", next_attempt_at=1100.0)  # failed, backing off
    assert progress_checks(store, BUDGETS, 1100.0 + 50)["deliveries_on_time"] is True
