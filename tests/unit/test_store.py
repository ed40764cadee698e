"""Store: the study/job/run state machine as transactions that check where they come from; idempotent indexing
with digests; re-opening only for routed late instances; runs that amend, stay unchanged, or are outdated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.states import JOB_TRANSITIONS, STUDY_TRANSITIONS, JobState, RunState, StudyState
from node.store import IndexedInstance, IndexOutcome, JobPlan, RunOutcome, Store
from node_fakes import TO_PACS


def inst(sop: str, study: str = "1.2.3", *, digest: str = "d1", routed: tuple[str, ...] = ("p",),
         own: bool = False, modality: str = "CR") -> IndexedInstance:
    return IndexedInstance(
        sop_instance_uid=sop, study_uid=study, series_uid="1.2.3.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        modality=modality, body_part="FEMUR", series_description="", transfer_syntax="1.2.840.10008.1.2.1",
        path=f"/spool/{sop}.dcm", size=10, calling_ae="SCU", patient_id="SYN-1", patient_age=50.0,
        patient_sex="F", study_date="20260101", digest=digest, own_result=own, routed_to=routed,
    )


def outcome(digest: str, sr: str, *, unchanged: bool = False, extra: tuple[str, ...] = (),
            predecessor: str | None = None) -> RunOutcome:
    objects = () if unchanged else ((sr, "9.9", "sr", f"/r/{sr}.dcm"), *((e, "9.8", "sc", f"/r/{e}.dcm") for e in extra))
    summary = {"timings": {"total_s": 1.0}, "fhir_status": "ok", "n_findings": len(extra), "inputs_missing": [],
               "sr_sop_uid": sr}
    return RunOutcome(digest, objects, unchanged, summary, predecessor)


def completed(store: Store, sops: tuple[str, ...] = ("1.1",), now: float = 2.0, force: bool = False) -> None:
    assert store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", sops, force)], now=now)


def deliver_all(store: Store) -> None:
    for item in store.due_outbox(now=1e12):
        store.outbox_sent(item["item_id"])


def state(store: Store, table: str = "studies") -> Any:
    if table == "studies":
        return store.study("1.2.3")["state"]  # type: ignore[index]
    return store.job("1.2.3/p")["state"]  # type: ignore[index]


def test_resent_instance_same_content_is_a_duplicate_other_content_a_recorded_conflict(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    assert store.index_instance(inst("1.1"), now=1.0) == IndexOutcome.NEW
    assert store.index_instance(inst("1.1"), now=2.0) == IndexOutcome.DUPLICATE
    assert store.index_instance(inst("1.1", digest="other"), now=2.5) == IndexOutcome.CONFLICT_KEPT
    assert store.index_instance(inst("1.2"), now=3.0) == IndexOutcome.NEW
    study = store.study("1.2.3")
    assert study is not None and study["instance_count"] == 2 and study["last_received_at"] == 3.0
    row = store.study_instances("1.2.3")[0]
    assert row["digest"] == "d1" and row["resent"] == 1 and row["conflicts"] == 1
    assert "instance-conflict" in [e["event"] for e in store.events("1.2.3")]


def test_replaced_instance_points_the_index_at_the_new_file_and_reopens(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    new = IndexedInstance(**{**inst("1.1", digest="d2").__dict__, "path": "/spool/1.1.d2.dcm"})
    assert store.replace_instance(new, now=3.0) == "/spool/1.1.dcm"
    assert store.study_instances("1.2.3")[0]["path"] == "/spool/1.1.d2.dcm"
    assert state(store) == StudyState.RECEIVING


def test_job_survives_a_dead_worker_and_is_claimed_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    assert not store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0), "completed twice"
    job = store.claim_job("worker-A", lease_seconds=60, now=3.0)
    assert job is not None and job["state"] == "running" and job["run_id"] == "1.2.3/p#1"
    assert store.claim_job("worker-B", 60, now=4.0) is None, "a leased job was handed out twice"
    reopened = Store(tmp_path / "db")  # worker-A is killed; the new process releases its lease at start-up
    assert reopened.release_leases_of_dead_owners("worker-B") == 1
    again = reopened.claim_job("worker-B", 60, now=5.0)
    assert again is not None and again["job_id"] == job["job_id"] and again["attempts"] == 2
    assert reopened.run("1.2.3/p#1")["state"] == RunState.FAILED  # type: ignore[index]
    # the first worker wakes up late: its run no longer holds the job, nothing it reports is recorded
    assert reopened.finish_run("1.2.3/p#1", outcome("x", "9.1"), TO_PACS) is None
    assert reopened.outbox_items() == []


def test_results_are_queued_once_and_study_is_sent_when_delivered(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    assert store.finish_run(job["run_id"], outcome("x", "9.1", extra=("9.2",)), TO_PACS) == RunState.SENDING
    assert store.finish_run(job["run_id"], outcome("x", "9.1", extra=("9.2",)), TO_PACS) is None  # a replay
    assert len(store.outbox_items()) == 2
    assert state(store) == StudyState.PROCESSING
    deliver_all(store)
    assert state(store, "jobs") == JobState.SENT and state(store) == StudyState.SENT
    assert store.run(job["run_id"])["state"] == RunState.SENT  # type: ignore[index]


def test_dead_letter_fails_the_job_and_retry_revives_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.finish_run(job["run_id"], outcome("x", "9.1"), TO_PACS)
    item = store.due_outbox()[0]
    store.outbox_failed(item["item_id"], "association rejected", None)
    assert state(store, "jobs") == JobState.FAILED and state(store) == StudyState.FAILED
    assert store.retry_dead() == 1
    assert store.due_outbox()[0]["item_id"] == item["item_id"]
    assert state(store) == StudyState.PROCESSING
    deliver_all(store)
    assert state(store) == StudyState.SENT


def test_late_instance_reopens_only_when_a_pipeline_reads_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.finish_run(job["run_id"], outcome("x", "9.1"), [])
    assert state(store) == StudyState.SENT
    store.index_instance(inst("1.5", modality="MR", routed=()), now=4.0)
    study = store.study("1.2.3")
    assert study is not None and study["state"] == StudyState.SENT and study["instance_count"] == 2
    assert "late-instance-not-routed" in [e["event"] for e in store.events("1.2.3")]
    store.index_instance(inst("1.2"), now=5.0)
    study = store.study("1.2.3")
    assert study is not None and study["state"] == StudyState.RECEIVING and study["reopen_count"] == 1
    assert "for p after state sent" in study["reopen_reason"] and study["expected_count"] is None


def test_own_results_coming_back_never_count_or_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.finish_run(job["run_id"], outcome("x", "9.1"), [])
    assert store.is_own_result("9.1", "x") and store.is_own_result("other", "9.9")
    assert store.index_instance(inst("9.1", own=True, routed=()), now=4.0) == IndexOutcome.OWN_RESULT
    study = store.study("1.2.3")
    assert study is not None and study["state"] == StudyState.SENT and study["instance_count"] == 1
    assert [r["sop_instance_uid"] for r in store.study_instances("1.2.3")] == ["1.1"]
    assert store.own_series("1.2.3") == {"9.9", "1.2.3.1"}


def test_instance_during_the_run_requeues_the_job_after_it_and_outdated_results_are_not_sent(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.index_instance(inst("1.2"), now=3.5)  # arrives while the job runs
    assert state(store) == StudyState.RECEIVING and state(store, "jobs") == JobState.RUNNING
    completed(store, ("1.1", "1.2"), now=6.0)  # the re-opened study completes again during the same run
    assert state(store, "jobs") == JobState.RUNNING, "a completion never overwrites a running job's state"
    assert store.finish_run(job["run_id"], outcome("x", "9.1"), TO_PACS) == RunState.SUPERSEDED
    assert state(store, "jobs") == JobState.QUEUED and store.outbox_items() == []
    again = store.claim_job("w", 60, now=7.0)
    assert again is not None and again["inputs"] == '["1.1", "1.2"]' and again["run_id"] == "1.2.3/p#2"


def test_jobs_of_a_reopened_study_wait_for_it_to_complete_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    store.index_instance(inst("1.2"), now=2.5)  # before the worker claimed the job
    assert store.claim_job("w", 60, now=3.0) is None, "a run must cover every routed instance received before it"
    completed(store, ("1.1", "1.2"), now=5.0)
    job = store.claim_job("w", 60, now=6.0)
    assert job is not None and job["inputs"] == '["1.1", "1.2"]'


def test_rerun_amends_the_current_results_and_unchanged_inputs_send_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    first = store.claim_job("w", 60, now=3.0)
    assert first is not None
    store.finish_run(first["run_id"], outcome("a", "9.1"), TO_PACS)
    deliver_all(store)
    store.index_instance(inst("1.2"), now=4.0)
    completed(store, ("1.1", "1.2"), now=7.0)
    second = store.claim_job("w", 60, now=8.0)
    assert second is not None
    store.finish_run(second["run_id"], outcome("b", "9.2", predecessor="9.1"), TO_PACS)
    assert store.run(first["run_id"])["state"] == RunState.SUPERSEDED  # type: ignore[index]
    assert store.current_run("1.2.3/p")["predecessor_sr_uid"] == "9.1"  # type: ignore[index]
    deliver_all(store)
    assert state(store) == StudyState.SENT
    # completing again with the same inputs queues nothing; a forced reprocess runs but sends nothing new
    assert store.request_processing("1.2.3")
    completed(store, ("1.1", "1.2"), now=9.0)
    assert state(store) == StudyState.SENT and store.claim_job("w", 60, now=9.5) is None
    assert store.request_processing("1.2.3", reprocess="*")
    completed(store, ("1.1", "1.2"), now=10.0, force=True)
    third = store.claim_job("w", 60, now=11.0)
    assert third is not None
    assert store.finish_run(third["run_id"], outcome("b", "9.2", unchanged=True), TO_PACS) == RunState.UNCHANGED
    assert state(store) == StudyState.SENT and len(store.outbox_items()) == 2


def test_transitions_from_a_wrong_state_are_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    with store.transaction():
        assert not store._study_to("1.2.3", StudyState.NO_PIPELINE, 3.0, "test")  # processing -> no-pipeline
        assert not store._job_to("1.2.3/p", JobState.SENT, 3.0, "test")  # queued -> sent
    assert state(store) == StudyState.PROCESSING and state(store, "jobs") == JobState.QUEUED


@pytest.mark.parametrize("table", [STUDY_TRANSITIONS, JOB_TRANSITIONS])
def test_every_transition_names_who_makes_it(table: dict[Any, str]) -> None:
    assert all(":" in actor for actor in table.values())


def test_failing_run_is_retried_then_failed(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.index_instance(inst("1.1"), now=1.0)
    completed(store)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None and store.fail_run(job["run_id"], "boom", retry=True)
    assert state(store, "jobs") == JobState.QUEUED and state(store) == StudyState.PROCESSING
    job = store.claim_job("w", 60, now=4.0)
    assert job is not None and store.fail_run(job["run_id"], "boom", retry=False)
    assert state(store, "jobs") == JobState.FAILED and state(store) == StudyState.FAILED
    assert "failed: boom" in store.job("1.2.3/p")["state_reason"]  # type: ignore[index]
