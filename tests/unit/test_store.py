"""Store: idempotent indexing, job claiming with leases, results queued once, outbox to sent/dead, study states."""

from __future__ import annotations

from pathlib import Path

from node.store import IndexedInstance, Store


def inst(sop: str, study: str = "1.2.3") -> IndexedInstance:
    return IndexedInstance(
        sop_instance_uid=sop, study_uid=study, series_uid="1.2.3.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality="CR", body_part="FEMUR", series_description="", transfer_syntax="1.2.840.10008.1.2.1",
        path=f"/spool/{sop}.dcm", size=10, calling_ae="SCU", patient_id="SYN-1", patient_age=50.0,
        patient_sex="F", study_date="20260101",
    )


def test_repeated_sop_instance_is_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert store.index_instance(inst("1.1"), now=1.0)
    assert not store.index_instance(inst("1.1"), now=2.0)
    assert store.index_instance(inst("1.2"), now=3.0)
    study = store.study("1.2.3")
    assert study is not None and study["instance_count"] == 2 and study["last_received_at"] == 3.0


def test_job_survives_a_dead_worker_and_is_claimed_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    assert store.complete_study("1.2.3", "quiet", [("p", "1")], now=2.0)
    assert not store.complete_study("1.2.3", "quiet", [("p", "1")], now=2.0), "completed twice"
    job = store.claim_job("worker-A", lease_seconds=60, now=3.0)
    assert job is not None and job["state"] == "running"
    assert store.claim_job("worker-B", 60, now=4.0) is None, "a leased job was handed out twice"
    # worker-A is killed; a new process releases its lease at start-up and claims the job again
    reopened = Store(tmp_path / "db")
    assert reopened.release_leases_of_dead_owners("worker-B") == 1
    again = reopened.claim_job("worker-B", 60, now=5.0)
    assert again is not None and again["job_id"] == job["job_id"] and again["attempts"] == 2


def test_results_are_queued_once_and_study_is_sent_when_delivered(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [("p", "1")], now=2.0)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    summary = {"timings": {"total_s": 1.0}, "fhir_status": "ok", "n_findings": 1, "inputs_missing": [],
               "sr_sop_uid": "9.1"}
    objects = [("9.1", "sr", "/r/sr.dcm"), ("9.2", "sc", "/r/sc-1.dcm")]
    store.finish_job_with_results(job["job_id"], objects, "pacs", summary)
    store.finish_job_with_results(job["job_id"], objects, "pacs", summary)  # a replay after a crash
    assert len(store.outbox_items()) == 2
    assert store.study("1.2.3")["state"] == "processing"  # type: ignore[index]
    for item in store.due_outbox():
        store.outbox_sent(item["item_id"])
    assert store.job(job["job_id"])["state"] == "sent"  # type: ignore[index]
    assert store.study("1.2.3")["state"] == "sent"  # type: ignore[index]


def test_dead_letter_fails_the_job_and_retry_revives_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [("p", "1")], now=2.0)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.finish_job_with_results(
        job["job_id"], [("9.1", "sr", "/r/sr.dcm")], "pacs",
        {"timings": {}, "fhir_status": "ok", "n_findings": 0, "inputs_missing": [], "sr_sop_uid": "9.1"},
    )
    item = store.due_outbox()[0]
    store.outbox_failed(item["item_id"], "association rejected", None)
    assert store.job(job["job_id"])["state"] == "failed"  # type: ignore[index]
    assert store.study("1.2.3")["state"] == "failed"  # type: ignore[index]
    assert store.retry_dead() == 1
    assert store.due_outbox()[0]["item_id"] == item["item_id"]
    assert store.study("1.2.3")["state"] == "processing"  # type: ignore[index]


def test_late_instance_reopens_a_finished_study(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [], now=2.0)
    assert store.study("1.2.3")["state"] == "no-pipeline"  # type: ignore[index]
    store.index_instance(inst("1.2"), now=3.0)
    assert store.study("1.2.3")["state"] == "receiving"  # type: ignore[index]
