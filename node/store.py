"""The one SQLite schema (sqlite-utils, WAL): instances, studies, jobs, runs, results, outbox, events.

Every state change of a study, job or run is one transaction here that checks the state it comes from
(``node.states`` lists the transitions and who makes each), so the node can be killed anywhere and resume, and a
late writer never overwrites a newer state. One ``Store`` per thread: SQLite connections are not shared.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import sqlite_utils

from node.feedback import AUDIT_KIND as FEEDBACK_AUDIT_KIND
from node.feedback import FeedbackError, FeedbackRate, FeedbackRecord, Verdict, checked_reason, parse_verdict, rates
from node.states import (
    FINAL_STUDY_STATES, UNFINISHED_JOB_STATES, JobState, RunState, StudyState, job_sources, study_sources,
)

_SCHEMA: dict[str, tuple[dict[str, Any], str]] = {
    "instances": (
        {
            "sop_instance_uid": str, "study_uid": str, "series_uid": str, "sop_class_uid": str, "modality": str,
            "body_part": str, "series_description": str, "transfer_syntax": str, "path": str, "size": int,
            "calling_ae": str, "received_at": float,
            # sha256 of the dataset as received; role: "source" or "own-result" (the node's SR/SC coming back)
            "digest": str, "role": str, "resent": int, "conflicts": int,
        },
        "sop_instance_uid",
    ),
    "studies": (
        {
            "study_uid": str, "patient_id": str, "patient_age": float, "patient_sex": str, "study_date": str,
            "state": str, "instance_count": int, "expected_count": int, "expected_checked_at": float,
            "first_received_at": float, "last_received_at": float, "completed_at": float,
            "completed_reason": str, "updated_at": float,
            # why the study is in its state; re-open bookkeeping; a pending manual trigger / reprocess request
            "state_reason": str, "reopen_count": int, "reopened_at": float, "reopen_reason": str,
            "complete_now": str, "reprocess": str,
        },
        "study_uid",
    ),
    "jobs": (
        {
            "job_id": str, "study_uid": str, "pipeline": str, "pipeline_version": str, "state": str,
            "attempts": int, "lease_until": float, "lease_owner": str, "error": str, "created_at": float,
            "updated_at": float, "timings": str, "fhir_status": str, "n_findings": int, "inputs_missing": str,
            "sr_sop_uid": str,
            # inputs: JSON list of the SOP Instance UIDs routing selected (selected once, here); generation is
            # bumped at each (re-)queue; active_run_id is the run holding the lease; current_run_id the run whose
            # results are the job's current results
            "inputs": str, "generation": int, "runs": int, "active_run_id": str, "current_run_id": str,
            "state_reason": str,
        },
        "job_id",
    ),
    "runs": (
        {
            "run_id": str, "job_id": str, "study_uid": str, "pipeline": str, "pipeline_version": str,
            "generation": int, "state": str, "inputs": str, "input_digest": str, "started_at": float,
            "finished_at": float, "sr_sop_uid": str, "predecessor_sr_uid": str, "n_findings": int,
            "fhir_status": str, "detail": str,
        },
        "run_id",
    ),
    "results": (
        {"sop_instance_uid": str, "job_id": str, "run_id": str, "study_uid": str, "series_uid": str, "kind": str,
         "path": str, "created_at": float},
        "sop_instance_uid",
    ),
    "outbox": (
        {
            "item_id": str, "sop_instance_uid": str, "job_id": str, "run_id": str, "destination": str, "path": str,
            "state": str, "attempts": int, "next_attempt_at": float, "last_error": str, "sent_at": float,
            "created_at": float,
        },
        "item_id",
    ),
    "events": (
        {"event_id": int, "ts": float, "study_uid": str, "job_id": str, "event": str, "detail": str},
        "event_id",
    ),
    # Who did what to which data (associations, PHI reads, results sent, configuration); exported as FHIR
    # AuditEvent by node.audit. No patient names or IDs: studies by UID, peers by AE title and address.
    "audit": (
        {"audit_id": int, "ts": float, "kind": str, "outcome": str, "actor": str, "source": str, "study_uid": str,
         "detail": str},
        "audit_id",
    ),
    # The findings of each run, as the worklist ranks them (the SR holds the full record): one row per lesion.
    "findings": (
        {"finding_id": str, "run_id": str, "job_id": str, "study_uid": str, "tracking_id": str, "class_value": str,
         "class_scheme": str, "class_meaning": str, "probability": float, "sop_instance_uid": str,
         "frame_number": int},
        "finding_id",
    ),
    # When a person first opened a study's page, and first acknowledged its AI result (record_feedback).
    "study_reads": (
        {"read_id": str, "study_uid": str, "username": str, "opened_at": float, "acknowledged_at": float},
        "read_id",
    ),
    # Readers' verdicts on the AI's results (node.feedback), never updated: a reader's latest verdict on a finding
    # counts. tracking_uid/tracking_id are NULL for study-level feedback (acknowledged); run_id and pipeline are
    # NULL only for an acknowledgement of a study without results.
    "feedback": (
        {"feedback_id": int, "study_uid": str, "run_id": str, "tracking_uid": str, "tracking_id": str,
         "pipeline": str, "pipeline_version": str, "verdict": str, "reason": str, "username": str, "ts": float},
        "feedback_id",
    ),
    # People who log in to the web application; password_hash is argon2id (node.web.auth), role reader or admin.
    "users": (
        {"username": str, "password_hash": str, "role": str, "created_at": float, "disabled": int},
        "username",
    ),
    # Logged-in browser sessions: the cookie carries a random token, the table only its sha256.
    "web_sessions": (
        {"token_sha256": str, "username": str, "csrf": str, "created_at": float, "expires_at": float},
        "token_sha256",
    ),
}


class StateConflict(RuntimeError):
    """A transition was refused because the row is no longer in a state it may be made from."""


class IndexOutcome(StrEnum):
    NEW = "new"  # a new instance of the study
    DUPLICATE = "duplicate"  # same SOP Instance UID, same content: nothing changes
    CONFLICT_KEPT = "conflict-kept"  # same UID, different content, the first one kept (policy keep-first)
    REPLACED = "replaced"  # same UID, different content, replaced (policy replace)
    OWN_RESULT = "own-result"  # one of the node's own results came back: stored, never counted or routed


@dataclass(frozen=True)
class IndexedInstance:
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    body_part: str
    series_description: str
    transfer_syntax: str
    path: str
    size: int
    calling_ae: str
    patient_id: str
    patient_age: float | None
    patient_sex: str
    study_date: str
    digest: str = ""
    own_result: bool = False
    # the pipelines whose routing rules match this instance (computed by the listener from the config)
    routed_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class KnownInstance:
    digest: str
    path: str
    role: str


@dataclass(frozen=True)
class JobPlan:
    """What the assembler wants a pipeline to read at completion; ``force`` re-runs with unchanged inputs."""

    pipeline: str
    version: str
    inputs: tuple[str, ...]
    force: bool = False


@dataclass(frozen=True)
class RunOutcome:
    """What the worker reports for a finished run."""

    input_digest: str
    objects: tuple[tuple[str, str, str, str], ...]  # (sop_uid, series_uid, kind, path); empty when unchanged
    unchanged: bool
    summary: dict[str, Any]  # timings, fhir_status, n_findings, inputs_missing, sr_sop_uid[, instances_excluded]
    predecessor_sr_uid: str | None = None


@dataclass(frozen=True)
class DeliveryRoute:
    """A destination and the result kinds ("sr", "sc", "gsps", "ko") it receives: what finish_run queues."""

    name: str
    kinds: frozenset[str]


def _in(states: Sequence[str]) -> str:
    return "(" + ",".join("?" * len(states)) + ")"


class Store:
    """Typed access to the node's database. Open one per thread."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(db_path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        # FULL: a committed row survives power loss, which is what "stored" means to the sender.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        for name, (columns, pk) in _SCHEMA.items():
            table = self.db[name]
            if not table.exists():
                table.create(columns, pk=pk)  # type: ignore[union-attr]
                continue
            have = set(table.columns_dict)  # a database of an earlier version: add what it lacks
            for column, kind in columns.items():
                if column not in have:
                    table.add_column(column, kind)  # type: ignore[union-attr]
        self.db["instances"].create_index(["study_uid"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["jobs"].create_index(["state"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["runs"].create_index(["job_id"], if_not_exists=True)  # type: ignore[union-attr]
        # is_own_result runs on every C-STORE: both of its lookups must be index searches
        self.db["results"].create_index(["series_uid"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["results"].create_index(["study_uid"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["outbox"].create_index(["state", "next_attempt_at"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["outbox"].create_index(["run_id"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["findings"].create_index(["run_id"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["study_reads"].create_index(["study_uid"], if_not_exists=True)  # type: ignore[union-attr]
        # the login throttle counts recent failures on every login
        self.db["audit"].create_index(["kind", "ts"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["feedback"].create_index(["study_uid"], if_not_exists=True)  # type: ignore[union-attr]

    def close(self) -> None:
        self.db.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE so that read-then-write (claiming a job) cannot race another writer."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        rows = list(self.db.query(sql, list(params)))
        return rows[0] if rows else None

    def _event(self, event: str, study_uid: str = "", job_id: str = "", detail: str = "") -> None:
        self.db["events"].insert(  # type: ignore[union-attr]
            {"ts": time.time(), "study_uid": study_uid, "job_id": job_id, "event": event, "detail": detail}
        )

    def record_event(self, event: str, study_uid: str = "", job_id: str = "", detail: str = "") -> None:
        with self.transaction():
            self._event(event, study_uid, job_id, detail)

    # -- transitions (the only writers of a state column) -------------------------------------------------------

    def _study_to(self, study_uid: str, to: StudyState, now: float, reason: str, **columns: Any) -> bool:
        sources = study_sources(to)
        sets = "".join(f", {k} = ?" for k in columns)
        cur = self.db.execute(
            f"UPDATE studies SET state = ?, state_reason = ?, updated_at = ?{sets} "
            f"WHERE study_uid = ? AND state IN {_in(sources)}",
            [str(to), reason, now, *columns.values(), study_uid, *sources],
        )
        return cur.rowcount == 1

    def _job_to(self, job_id: str, to: JobState, now: float, reason: str | None, *, only_from: Sequence[str] = (),
                **columns: Any) -> bool:
        sources = [s for s in job_sources(to) if not only_from or s in only_from]
        sets = "".join(f", {k} = ?" for k in columns)
        cur = self.db.execute(
            f"UPDATE jobs SET state = ?, state_reason = ?, updated_at = ?{sets} "
            f"WHERE job_id = ? AND state IN {_in(sources)}",
            [str(to), reason, now, *columns.values(), job_id, *sources],
        )
        return cur.rowcount == 1

    # -- instances and studies -------------------------------------------------------------------------------

    def known_instance(self, sop_instance_uid: str) -> KnownInstance | None:
        row = self.db.execute(
            "SELECT digest, path, role FROM instances WHERE sop_instance_uid = ?", [sop_instance_uid]
        ).fetchone()
        return KnownInstance(row[0] or "", row[1], row[2] or "source") if row else None

    def is_own_result(self, sop_instance_uid: str, series_uid: str) -> bool:
        """True for an object the node wrote (by its SOP Instance UID or its result series)."""
        row = self.db.execute(
            "SELECT 1 FROM results WHERE sop_instance_uid = ? OR series_uid = ? LIMIT 1", [sop_instance_uid, series_uid]
        ).fetchone()
        return row is not None

    def index_instance(self, inst: IndexedInstance, now: float | None = None) -> IndexOutcome:
        """Record a stored instance. A late instance re-opens a finished study only when a pipeline reads it."""
        with self.transaction():
            now = time.time() if now is None else now  # taken under the lock: ordered with every claim
            known = self.known_instance(inst.sop_instance_uid)
            if known is not None:
                return self._index_known(inst, known, now)
            self.db["instances"].insert(  # type: ignore[union-attr]
                {
                    "sop_instance_uid": inst.sop_instance_uid, "study_uid": inst.study_uid,
                    "series_uid": inst.series_uid, "sop_class_uid": inst.sop_class_uid, "modality": inst.modality,
                    "body_part": inst.body_part, "series_description": inst.series_description,
                    "transfer_syntax": inst.transfer_syntax, "path": inst.path, "size": inst.size,
                    "calling_ae": inst.calling_ae, "received_at": now, "digest": inst.digest,
                    "role": "own-result" if inst.own_result else "source", "resent": 0, "conflicts": 0,
                }
            )
            if inst.own_result:
                self._event("own-result-stored", inst.study_uid, detail="not counted, never routed")
                return IndexOutcome.OWN_RESULT
            study = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [inst.study_uid]).fetchone()
            if study is None:
                self.db["studies"].insert(  # type: ignore[union-attr]
                    {
                        "study_uid": inst.study_uid, "patient_id": inst.patient_id,
                        "patient_age": inst.patient_age, "patient_sex": inst.patient_sex,
                        "study_date": inst.study_date, "state": str(StudyState.RECEIVING), "instance_count": 1,
                        "expected_count": None, "expected_checked_at": None, "first_received_at": now,
                        "last_received_at": now, "completed_at": None, "completed_reason": None, "updated_at": now,
                        "state_reason": "receiving instances", "reopen_count": 0, "complete_now": None,
                        "reprocess": None,
                    }
                )
                self._event("study-opened", inst.study_uid)
                return IndexOutcome.NEW
            self.db.execute(
                "UPDATE studies SET instance_count = instance_count + 1, last_received_at = ? WHERE study_uid = ?",
                [now, inst.study_uid],
            )
            if study[0] != StudyState.RECEIVING:
                self._late_instance(inst.study_uid, StudyState(study[0]), inst.routed_to, "late instance", now)
        return IndexOutcome.NEW

    def _index_known(self, inst: IndexedInstance, known: KnownInstance, now: float) -> IndexOutcome:
        if known.digest == inst.digest or not inst.digest:
            self.db.execute("UPDATE instances SET resent = resent + 1 WHERE sop_instance_uid = ?",
                            [inst.sop_instance_uid])
            return IndexOutcome.DUPLICATE
        self.db.execute("UPDATE instances SET conflicts = conflicts + 1 WHERE sop_instance_uid = ?",
                        [inst.sop_instance_uid])
        self._event("instance-conflict", inst.study_uid,
                    detail="re-sent with the same SOP Instance UID and different content; the first one is kept")
        return IndexOutcome.CONFLICT_KEPT

    def replace_instance(self, inst: IndexedInstance, now: float | None = None) -> str | None:
        """Policy "replace": point the index at the new file and re-open the study if a pipeline reads it.

        Returns the path of the replaced file (for the caller to delete), None if the instance was unknown.
        """
        now = time.time() if now is None else now
        with self.transaction():
            known = self.known_instance(inst.sop_instance_uid)
            if known is None:
                return None
            self.db.execute(
                "UPDATE instances SET path = ?, size = ?, digest = ?, transfer_syntax = ?, conflicts = conflicts + 1, "
                "received_at = ? WHERE sop_instance_uid = ?",
                [inst.path, inst.size, inst.digest, inst.transfer_syntax, now, inst.sop_instance_uid],
            )
            self._event("instance-replaced", inst.study_uid,
                        detail="re-sent with the same SOP Instance UID and different content; replaced")
            row = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [inst.study_uid]).fetchone()
            if row is not None and known.role == "source":
                self.db.execute("UPDATE studies SET last_received_at = ? WHERE study_uid = ?", [now, inst.study_uid])
                if row[0] != StudyState.RECEIVING:
                    self._late_instance(inst.study_uid, StudyState(row[0]), inst.routed_to,
                                        "instance replaced with different content", now)
            return known.path

    def _late_instance(self, study_uid: str, state: StudyState, routed_to: tuple[str, ...], what: str,
                       now: float) -> None:
        if not routed_to:
            self._event("late-instance-not-routed", study_uid,
                        detail=f"{what} after state {state}: stored, no pipeline reads it, nothing re-run")
            return
        reason = f"{what} for {', '.join(routed_to)} after state {state}"
        self._reopen(study_uid, reason, now)

    def _reopen(self, study_uid: str, reason: str, now: float) -> None:
        # The PACS count is asked again (it has grown); the quiet period starts from the last instance.
        self._study_to(
            study_uid, StudyState.RECEIVING, now, f"re-opened: {reason}", completed_at=None,
            expected_count=None, expected_checked_at=None, reopened_at=now, reopen_reason=reason,
            reopen_count=self._scalar("SELECT reopen_count FROM studies WHERE study_uid = ?", [study_uid]) + 1,
        )
        self._event("study-reopened", study_uid, detail=reason)

    def _scalar(self, sql: str, params: Sequence[Any]) -> int:
        row = self.db.execute(sql, list(params)).fetchone()
        return int(row[0] or 0) if row else 0

    def study(self, study_uid: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM studies WHERE study_uid = ?", [study_uid])

    def studies(self, limit: int = 500) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM studies ORDER BY last_received_at DESC LIMIT ?", [limit]))

    def study_instances(self, study_uid: str, role: str | None = "source") -> list[dict[str, Any]]:
        """The study's instances (by default the ones it was sent; ``role=None``: the node's own results too)."""
        if role is None:
            return list(self.db.query("SELECT * FROM instances WHERE study_uid = ? ORDER BY received_at", [study_uid]))
        return list(self.db.query(
            "SELECT * FROM instances WHERE study_uid = ? AND role = ? ORDER BY received_at", [study_uid, role]
        ))

    def instances_by_uid(self, sop_instance_uids: Sequence[str]) -> list[dict[str, Any]]:
        rows = {r["sop_instance_uid"]: r for r in self.db.query(
            f"SELECT * FROM instances WHERE sop_instance_uid IN {_in(sop_instance_uids)}", list(sop_instance_uids)
        )} if sop_instance_uids else {}
        return [rows[u] for u in sop_instance_uids if u in rows]

    def own_series(self, study_uid: str) -> set[str]:
        """Series UIDs of the node's own results in the study (excluded from the PACS's instance count)."""
        rows = self.db.execute(
            "SELECT series_uid FROM results WHERE study_uid = ? UNION "
            "SELECT series_uid FROM instances WHERE study_uid = ? AND role = 'own-result'", [study_uid, study_uid]
        ).fetchall()
        return {r[0] for r in rows if r[0]}

    def studies_in_state(self, state: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM studies WHERE state = ?", [str(state)]))

    def set_expected_count(self, study_uid: str, expected: int | None, now: float) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE studies SET expected_count = ?, expected_checked_at = ? WHERE study_uid = ?",
                [expected, now, study_uid],
            )

    def complete_study(self, study_uid: str, reason: str,
                       plans: Sequence[JobPlan] | Callable[[list[dict[str, Any]]], Sequence[JobPlan]],
                       now: float | None = None) -> bool:
        """Mark a receiving study complete and (re-)queue the jobs whose inputs changed, in one transaction.

        A job is queued when it is new, when its inputs differ from the ones it last ran on, or when forced
        (reprocess). ``plans`` may be a function of the study's instances: it is then called inside the
        transaction, so an instance indexed while the plans are made cannot be left out of them (the assembler
        does this). Returns False if the study was not receiving (another thread completed it first).
        """
        now = time.time() if now is None else now
        with self.transaction():
            row = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [study_uid]).fetchone()
            if row is None or row[0] != StudyState.RECEIVING:
                return False
            if callable(plans):
                plans = plans(self.study_instances(study_uid))
            queued = [plan.pipeline for plan in plans if self._plan_job(study_uid, plan, now)]
            columns = dict(completed_at=now, completed_reason=reason, complete_now=None, reprocess=None)
            if not plans:
                why = f"no routing rule matched {self._received_kinds(study_uid)}"
                self._study_to(study_uid, StudyState.NO_PIPELINE, now, why, **columns)
                self._event("no-pipeline", study_uid, detail=why)
            elif queued:
                self._study_to(study_uid, StudyState.PROCESSING, now, f"processing: {', '.join(queued)}", **columns)
            else:
                self._study_to(study_uid, StudyState.PROCESSING, now, "complete again: waiting for earlier results",
                               **columns)
                self._settle_study(study_uid, now, why="complete again; no pipeline's inputs changed, nothing re-run")
            self._event("study-complete", study_uid, detail=f"{reason}; queued: {', '.join(queued) or 'none'}")
        return True

    def _received_kinds(self, study_uid: str) -> str:
        """What a study's routed-to-nobody images are, for its status: "(CT HEAD: 1 instance)". Modality and Body
        Part Examined only, never identifiers; an absent body part reads "no body part"."""
        rows = self.db.execute(
            "SELECT modality, body_part, COUNT(*) FROM instances WHERE study_uid = ? AND role = 'source' "
            "GROUP BY modality, body_part ORDER BY COUNT(*) DESC LIMIT 4", [study_uid]).fetchall()
        kinds = [f"{m or 'no modality'} {b or 'no body part'}: {n} instance{'s' if n != 1 else ''}" for m, b, n in rows]
        return f"({'; '.join(kinds)})" if kinds else "(no images)"

    def _plan_job(self, study_uid: str, plan: JobPlan, now: float) -> bool:
        job_id = f"{study_uid}/{plan.pipeline}"
        inputs = json.dumps(sorted(plan.inputs))
        job = self._one("SELECT state, inputs, pipeline_version FROM jobs WHERE job_id = ?", [job_id])
        if job is None:
            self.db["jobs"].insert(  # type: ignore[union-attr]
                {
                    "job_id": job_id, "study_uid": study_uid, "pipeline": plan.pipeline,
                    "pipeline_version": plan.version, "state": str(JobState.QUEUED), "attempts": 0,
                    "lease_until": None, "lease_owner": None, "error": None, "created_at": now, "updated_at": now,
                    "timings": "{}", "inputs": inputs, "generation": 1, "runs": 0, "active_run_id": None,
                    "current_run_id": None, "state_reason": "study complete",
                }
            )
            self._event("job-queued", study_uid, job_id)
            return True
        same = job["inputs"] == inputs and job["pipeline_version"] == plan.version
        if same and not plan.force:
            return False
        why = "reprocess requested" if same else "inputs changed: re-run"
        self.db.execute(
            "UPDATE jobs SET inputs = ?, pipeline_version = ?, generation = generation + 1 WHERE job_id = ?",
            [inputs, plan.version, job_id],
        )
        if job["state"] == JobState.RUNNING:
            # The running worker sees the new generation when it finishes and re-queues the job then.
            self._event("job-rerun-requested", study_uid, job_id, detail=f"{why} (after the current run)")
            return True
        if job["state"] != JobState.QUEUED:
            self._job_to(job_id, JobState.QUEUED, now, why, attempts=0, error=None)
        self._event("job-queued", study_uid, job_id, detail=why)
        return True

    def request_processing(self, study_uid: str, reprocess: str | None = None) -> bool:
        """Manual trigger: complete the study on the next assembly pass, whatever its state. False if unknown.

        ``reprocess``: "*" or a pipeline name to re-run even when its inputs did not change.
        """
        now = time.time()
        with self.transaction():
            row = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [study_uid]).fetchone()
            if row is None:
                return False
            what = f"reprocess requested ({reprocess})" if reprocess else "manual trigger"
            if row[0] != StudyState.RECEIVING:
                self._reopen(study_uid, what, now)
            self.db.execute("UPDATE studies SET complete_now = ?, reprocess = ? WHERE study_uid = ?",
                            [what, reprocess, study_uid])
            self._event("manual-trigger", study_uid, detail=what)
        return True

    # -- jobs and runs ------------------------------------------------------------------------------------------

    def claim_job(self, owner: str, lease_seconds: float, now: float | None = None) -> dict[str, Any] | None:
        """Claim the oldest queued job (or one whose lease expired) of a complete study, and open a run for it.

        Never deletes anything (a kill loses nothing). Jobs of a re-opened study wait for it to complete again, so
        a run always covers every routed instance received before it began. Returns the job row plus ``run_id``.
        """
        with self.transaction():
            now = time.time() if now is None else now  # taken under the lock: ordered with every indexing
            row = self.db.execute(
                "SELECT j.job_id, j.runs, j.active_run_id FROM jobs j JOIN studies s ON s.study_uid = j.study_uid "
                "WHERE s.state = ? AND (j.state = ? OR (j.state = ? AND j.lease_until < ?)) "
                "ORDER BY j.updated_at LIMIT 1",
                [str(StudyState.PROCESSING), str(JobState.QUEUED), str(JobState.RUNNING), now],
            ).fetchone()
            if row is None:
                return None
            job_id, n_runs, abandoned = row
            if abandoned:
                self._abandon_run(abandoned, "the worker's lease expired", now)
            run_id = f"{job_id}#{int(n_runs or 0) + 1}"
            ok = self._job_to(
                job_id, JobState.RUNNING, now, f"running ({run_id.rsplit('#', 1)[1]})", lease_until=now + lease_seconds,
                lease_owner=owner, attempts=self._scalar("SELECT attempts FROM jobs WHERE job_id = ?", [job_id]) + 1,
                runs=int(n_runs or 0) + 1, active_run_id=run_id,
            )
            if not ok:
                raise StateConflict(f"job {job_id} could not be claimed")
            job = self._one("SELECT * FROM jobs WHERE job_id = ?", [job_id])
            assert job is not None
            self.db["runs"].insert(  # type: ignore[union-attr]
                {
                    "run_id": run_id, "job_id": job_id, "study_uid": job["study_uid"], "pipeline": job["pipeline"],
                    "pipeline_version": job["pipeline_version"], "generation": job["generation"],
                    "state": str(RunState.RUNNING), "inputs": job["inputs"], "input_digest": None, "started_at": now,
                    "finished_at": None, "sr_sop_uid": None, "predecessor_sr_uid": None, "n_findings": None,
                    "fhir_status": None, "detail": None,
                }
            )
            self._event("job-running", job["study_uid"], job_id, detail=run_id)
        return {**job, "run_id": run_id}

    def _abandon_run(self, run_id: str, why: str, now: float) -> None:
        self.db.execute(
            "UPDATE runs SET state = ?, finished_at = ?, detail = ? WHERE run_id = ? AND state = ?",
            [str(RunState.FAILED), now, f"abandoned: {why}", run_id, str(RunState.RUNNING)],
        )

    def release_leases_of_dead_owners(self, live_owner: str) -> int:
        """At start-up no other worker of this node is alive: hand every running job back to the queue."""
        now = time.time()
        with self.transaction():
            rows = self.db.execute(
                "SELECT job_id, active_run_id FROM jobs WHERE state = ? AND (lease_owner IS NULL OR lease_owner != ?)",
                [str(JobState.RUNNING), live_owner],
            ).fetchall()
            for job_id, run_id in rows:
                if run_id:
                    self._abandon_run(run_id, "the node stopped during the run", now)
                self._job_to(job_id, JobState.QUEUED, now, "resumed after a restart", lease_until=None,
                             lease_owner=None, active_run_id=None)
            return len(rows)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM jobs WHERE job_id = ?", [job_id])

    def jobs(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        if study_uid is None:
            return list(self.db.query("SELECT * FROM jobs ORDER BY created_at DESC"))
        return list(self.db.query("SELECT * FROM jobs WHERE study_uid = ? ORDER BY created_at", [study_uid]))

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM runs WHERE run_id = ?", [run_id])

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM runs WHERE job_id = ? ORDER BY started_at", [job_id]))

    def current_run(self, job_id: str) -> dict[str, Any] | None:
        """The run whose results are the job's current results (sending or sent), if any."""
        return self._one(
            "SELECT r.* FROM runs r JOIN jobs j ON j.current_run_id = r.run_id WHERE j.job_id = ?", [job_id]
        )

    def results_of_run(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM results WHERE run_id = ? ORDER BY kind DESC, sop_instance_uid",
                                  [run_id]))

    def result_object(self, study_uid: str, sop_instance_uid: str) -> dict[str, Any] | None:
        """One of the node's result objects, only if it belongs to ``study_uid``."""
        return self._one("SELECT * FROM results WHERE sop_instance_uid = ? AND study_uid = ?",
                         [sop_instance_uid, study_uid])

    def findings_of_run(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM findings WHERE run_id = ? ORDER BY probability DESC", [run_id]))

    def finish_run(self, run_id: str, outcome: RunOutcome, destinations: Sequence[DeliveryRoute],
                   now: float | None = None) -> RunState | None:
        """Record a run's results and queue them for delivery, in one transaction.

        Returns the run's final state, or None when the run no longer holds its job (its lease expired and the
        job was claimed again): then nothing is recorded. Results of a run whose job was re-queued while it ran
        (inputs changed) are kept on disk but not sent: the next run supersedes them before anyone could read them.
        """
        now = time.time() if now is None else now
        with self.transaction():
            run = self._one("SELECT * FROM runs WHERE run_id = ?", [run_id])
            job = self._one("SELECT * FROM jobs WHERE job_id = ?", [run["job_id"]]) if run else None
            if run is None or job is None or job["active_run_id"] != run_id or job["state"] != JobState.RUNNING:
                return None
            job_id, study_uid = job["job_id"], job["study_uid"]
            s = outcome.summary
            run_cols: dict[str, Any] = dict(
                finished_at=now, input_digest=outcome.input_digest, n_findings=s["n_findings"],
                fhir_status=s["fhir_status"],
            )
            job_cols: dict[str, Any] = dict(
                lease_until=None, active_run_id=None, timings=json.dumps(s["timings"]), fhir_status=s["fhir_status"],
                error=None,
            )
            if job["generation"] != run["generation"]:
                self._set_run(run_id, RunState.SUPERSEDED, detail="inputs changed during the run: not sent, re-run",
                              **run_cols)
                self._job_to(job_id, JobState.QUEUED, now, "inputs changed during the run: re-run", attempts=0,
                             **job_cols)
                self._event("run-outdated", study_uid, job_id, detail=run_id)
                self._settle_study(study_uid, now)
                return RunState.SUPERSEDED
            current = self.current_run(job_id)
            if outcome.unchanged and current is not None:
                self._set_run(run_id, RunState.UNCHANGED, detail=f"same inputs as {current['run_id']}: nothing sent",
                              sr_sop_uid=current["sr_sop_uid"], **run_cols)
                to = JobState.SENT if current["state"] in (RunState.SENT, RunState.UNCHANGED) else JobState.SENDING
                if current["state"] == RunState.FAILED:
                    to = JobState.FAILED
                self._job_to(job_id, to, now, "inputs unchanged: nothing new sent", **job_cols)
                self._event("run-unchanged", study_uid, job_id, detail=run_id)
                self._settle_study(study_uid, now)
                return RunState.UNCHANGED
            for sop_uid, series_uid, kind, path in outcome.objects:
                self.db["results"].upsert(  # type: ignore[union-attr]
                    {"sop_instance_uid": sop_uid, "job_id": job_id, "run_id": run_id, "study_uid": study_uid,
                     "series_uid": series_uid, "kind": kind, "path": path, "created_at": now},
                    pk="sop_instance_uid",
                )
                for route in destinations:
                    if kind in route.kinds:
                        self._queue_delivery(route.name, sop_uid, job_id, run_id, path, now)
            pending = self._scalar(
                "SELECT COUNT(*) FROM outbox WHERE run_id = ? AND state = 'pending'", [run_id]) > 0
            state = RunState.SENDING if pending else RunState.SENT
            excluded = s.get("instances_excluded") or []
            detail = "; ".join(filter(None, [
                "amends " + current["run_id"] if current else "",
                f"not analysed: {len(excluded)} instance(s): "
                + ", ".join(f"{uid} {reason} ({why})" for uid, reason, why in excluded) if excluded else "",
            ]))
            for f in s.get("findings") or []:
                self.db["findings"].upsert(  # type: ignore[union-attr]
                    {"finding_id": f"{run_id}/{f['tracking_uid']}", "run_id": run_id, "job_id": job_id,
                     "study_uid": study_uid, "tracking_id": f["tracking_id"], "class_value": f["class_value"],
                     "class_scheme": f["class_scheme"], "class_meaning": f["class_meaning"],
                     "probability": float(f["probability"]), "sop_instance_uid": f["sop_instance_uid"],
                     "frame_number": int(f["frame_number"])},
                    pk="finding_id",
                )
            self._set_run(run_id, state, sr_sop_uid=s["sr_sop_uid"], predecessor_sr_uid=outcome.predecessor_sr_uid,
                          detail=detail, **run_cols)
            if current is not None:
                self._set_run(current["run_id"], RunState.SUPERSEDED, detail=f"amended by {run_id}")
            self._job_to(
                job_id, JobState.SENDING if pending else JobState.SENT, now,
                "delivering results" if pending else ("results delivered" if destinations else "results kept locally"),
                current_run_id=run_id, n_findings=s["n_findings"], inputs_missing=",".join(s["inputs_missing"]),
                sr_sop_uid=s["sr_sop_uid"], **job_cols,
            )
            self._event("results-written", study_uid, job_id,
                        detail=f"{run_id}: {len(outcome.objects)} objects" + (" (amendment)" if current else "")
                        + (f", {len(excluded)} instance(s) not analysed" if excluded else ""))
            self._settle_study(study_uid, now)
            return state

    def _set_run(self, run_id: str, state: RunState, **columns: Any) -> None:
        sets = "".join(f", {k} = ?" for k in columns)
        self.db.execute(f"UPDATE runs SET state = ?{sets} WHERE run_id = ?", [str(state), *columns.values(), run_id])

    def _queue_delivery(self, destination: str, sop_uid: str, job_id: str, run_id: str, path: str, now: float) -> None:
        item_id = f"{destination}/{sop_uid}"
        if self.db.execute("SELECT 1 FROM outbox WHERE item_id = ?", [item_id]).fetchone() is not None:
            return  # deterministic UIDs: the same object was already queued (or sent) by an earlier run
        self.db["outbox"].insert(  # type: ignore[union-attr]
            {"item_id": item_id, "sop_instance_uid": sop_uid, "job_id": job_id, "run_id": run_id,
             "destination": destination, "path": path, "state": "pending", "attempts": 0, "next_attempt_at": now,
             "last_error": None, "sent_at": None, "created_at": now}
        )

    def fail_run(self, run_id: str, error: str, retry: bool, now: float | None = None) -> bool:
        """A run raised: re-queue the job (``retry``) or fail it. False when the run no longer holds its job."""
        now = time.time() if now is None else now
        with self.transaction():
            run = self._one("SELECT * FROM runs WHERE run_id = ?", [run_id])
            job = self._one("SELECT * FROM jobs WHERE job_id = ?", [run["job_id"]]) if run else None
            if run is None or job is None or job["active_run_id"] != run_id or job["state"] != JobState.RUNNING:
                return False
            self._set_run(run_id, RunState.FAILED, finished_at=now, detail=error[:500])
            retry = retry or job["generation"] != run["generation"]
            self._job_to(
                job["job_id"], JobState.QUEUED if retry else JobState.FAILED, now,
                f"error, will retry: {error[:200]}" if retry else f"failed: {error[:200]}",
                error=error[:2000], lease_until=None, active_run_id=None,
            )
            self._event("job-error" if retry else "job-failed", job["study_uid"], job["job_id"], detail=error[:500])
            self._settle_study(job["study_uid"], now)
            return True

    def _settle_study(self, study_uid: str, now: float, why: str = "") -> None:
        """A processing study is sent when all its jobs are sent, failed when one failed and none is unfinished."""
        states = [r[0] for r in self.db.execute("SELECT state FROM jobs WHERE study_uid = ?", [study_uid])]
        if not states or any(s in UNFINISHED_JOB_STATES for s in states):
            return
        failed = JobState.FAILED in states
        to = StudyState.FAILED if failed else StudyState.SENT
        reason = why or ("a job failed: see its error" if failed else "all results delivered")
        if self._study_to(study_uid, to, now, reason):
            self._event(f"study-{to}", study_uid, detail=reason)

    def set_job_timings(self, job_id: str, timings: dict[str, float]) -> None:
        with self.transaction():
            self.db.execute("UPDATE jobs SET timings = ? WHERE job_id = ?", [json.dumps(timings), job_id])

    # -- outbox -------------------------------------------------------------------------------------------------

    def due_outbox(self, now: float | None = None, limit: int = 100, destination: str | None = None
                   ) -> list[dict[str, Any]]:
        """Pending items whose next attempt is due, oldest first; of one destination, or of all."""
        now = time.time() if now is None else now
        where = "state = 'pending' AND next_attempt_at <= ?"
        args: list[Any] = [now]
        if destination is not None:
            where, args = where + " AND destination = ?", [*args, destination]
        return list(self.db.query(f"SELECT * FROM outbox WHERE {where} ORDER BY created_at LIMIT ?", [*args, limit]))

    def outbox_items(self, state: str | None = None, destination: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = ["1"]
        args: list[Any] = []
        if state is not None:
            where, args = [*where, "state = ?"], [*args, state]
        if destination is not None:
            where, args = [*where, "destination = ?"], [*args, destination]
        return list(self.db.query(f"SELECT * FROM outbox WHERE {' AND '.join(where)} ORDER BY created_at", args))

    def outbox_sent(self, item_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL "
                "WHERE item_id = ? AND state = 'pending'",
                [now, item_id],
            )
            self._after_outbox_change(item_id, now)

    def outbox_failed(self, item_id: str, error: str, next_attempt_at: float | None, now: float | None = None) -> None:
        """Record a failed send; ``next_attempt_at`` None means the item is dead-lettered."""
        now = time.time() if now is None else now
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE item_id = ? AND state = 'pending'",
                ["pending" if next_attempt_at is not None else "dead", error[:1000], next_attempt_at or now, item_id],
            )
            if next_attempt_at is None:
                self._event("outbox-dead", detail=f"{item_id}: {error[:300]}")
            self._after_outbox_change(item_id, now)

    def retry_dead(self, destination: str | None = None, item_ids: Sequence[str] = ()) -> int:
        """Re-queue dead-lettered items (all, one destination's, or the named ones) with their attempts reset; the
        runs and jobs they failed go back to sending. Returns how many items were re-queued."""
        now = time.time()
        where, args = "state = 'dead'", []
        if destination is not None:
            where, args = where + " AND destination = ?", [destination]
        if item_ids:
            where, args = where + f" AND item_id IN {_in(item_ids)}", [*args, *item_ids]
        with self.transaction():
            runs = [r[0] for r in self.db.execute(f"SELECT DISTINCT run_id FROM outbox WHERE {where}", args)]
            cur = self.db.execute(
                f"UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ? WHERE {where}", [now, *args],
            )
            for run_id in runs:
                job = self._one("SELECT j.* FROM jobs j JOIN runs r ON r.job_id = j.job_id WHERE r.run_id = ?",
                                [run_id])
                if job is None or job["current_run_id"] != run_id:
                    continue
                self._set_run(run_id, RunState.SENDING, detail="deliveries re-queued by outbox retry")
                if self._job_to(job["job_id"], JobState.SENDING, now, "deliveries re-queued by outbox retry",
                                only_from=[str(JobState.FAILED)], error=None):
                    self._study_to(job["study_uid"], StudyState.PROCESSING, now, "deliveries re-queued by outbox retry")
            return int(cur.rowcount)

    def _after_outbox_change(self, item_id: str, now: float) -> None:
        run_id = self.db.execute("SELECT run_id FROM outbox WHERE item_id = ?", [item_id]).fetchone()[0]
        states = {r[0] for r in self.db.execute("SELECT state FROM outbox WHERE run_id = ?", [run_id])}
        if "pending" in states:
            return
        run = self._one("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if run is None:
            return
        dead = "dead" in states
        if run["state"] == RunState.SENDING:
            self._set_run(run_id, RunState.FAILED if dead else RunState.SENT,
                          detail="delivery failed: see outbox" if dead else "delivered")
        job = self._one("SELECT * FROM jobs WHERE job_id = ?", [run["job_id"]])
        if job is None or job["current_run_id"] != run_id:
            return  # an older, superseded run finished delivering: the job follows its current run
        to = JobState.FAILED if dead else JobState.SENT
        if self._job_to(job["job_id"], to, now, "delivery failed: see outbox" if dead else "results delivered",
                        only_from=[str(JobState.SENDING)], error="delivery failed: see outbox" if dead else None):
            self._event(f"job-{to}", job["study_uid"], job["job_id"])
            self._settle_study(job["study_uid"], now)

    # -- watchdog -----------------------------------------------------------------------------------------------

    def settle(self, study_uid: str, why: str) -> None:
        """Re-derive a processing study's state from its jobs (the watchdog's repair for a missed settle)."""
        with self.transaction():
            self._settle_study(study_uid, time.time(), why)

    def settle_job_deliveries(self, job_id: str, why: str) -> bool:
        """A sending job without pending deliveries of its current run: derive its state from them."""
        now = time.time()
        with self.transaction():
            job = self._one("SELECT * FROM jobs WHERE job_id = ?", [job_id])
            if job is None or job["state"] != JobState.SENDING:
                return False
            states = {r[0] for r in self.db.execute("SELECT state FROM outbox WHERE run_id = ?",
                                                     [job["current_run_id"]])}
            if "pending" in states:
                return False
            to = JobState.FAILED if "dead" in states else JobState.SENT
            self._job_to(job_id, to, now, why, only_from=[str(JobState.SENDING)])
            self._event("watchdog", job["study_uid"], job_id, detail=why)
            self._settle_study(job["study_uid"], now)
            return True

    def fail_stuck_job(self, job_id: str, from_state: JobState, why: str) -> bool:
        now = time.time()
        with self.transaction():
            job = self._one("SELECT * FROM jobs WHERE job_id = ?", [job_id])
            if job is None or job["state"] != from_state:
                return False
            if job["active_run_id"]:
                self._abandon_run(job["active_run_id"], why, now)
            ok = self._job_to(job_id, JobState.FAILED, now, why, only_from=[str(from_state)], error=why,
                              lease_until=None, active_run_id=None)
            if ok:
                self._event("watchdog", job["study_uid"], job_id, detail=why)
                self._settle_study(job["study_uid"], now)
            return ok

    def stale(self, table: str, states: Sequence[str], older_than: float) -> list[dict[str, Any]]:
        """Rows of ``studies`` or ``jobs`` in one of ``states`` whose state has not changed since ``older_than``."""
        assert table in ("studies", "jobs")
        return list(self.db.query(
            f"SELECT * FROM {table} WHERE state IN {_in(states)} AND updated_at < ?", [*states, older_than]
        ))

    # -- audit --------------------------------------------------------------------------------------------------

    def audit(self, kind: str, outcome: str, *, actor: str = "", source: str = "", study_uid: str = "",
              detail: dict[str, Any] | None = None, now: float | None = None) -> None:
        with self.transaction():
            self._audit(kind, outcome, actor, source, study_uid, detail, time.time() if now is None else now)

    def _audit(self, kind: str, outcome: str, actor: str, source: str, study_uid: str,
               detail: dict[str, Any] | None, now: float) -> None:
        self.db["audit"].insert(  # type: ignore[union-attr]
            {"ts": now, "kind": kind, "outcome": outcome, "actor": actor, "source": source, "study_uid": study_uid,
             "detail": json.dumps(detail or {}, sort_keys=True)}
        )

    def audit_records(self, since: float = 0.0, kind: str | None = None) -> list[dict[str, Any]]:
        if kind is None:
            return list(self.db.query("SELECT * FROM audit WHERE ts >= ? ORDER BY audit_id", [since]))
        return list(self.db.query("SELECT * FROM audit WHERE ts >= ? AND kind = ? ORDER BY audit_id", [since, kind]))


    def failed_logins(self, kind: str, since: float, actor: str | None = None, source: str | None = None) -> int:
        """Failed logins (audit rows of ``kind`` with an outcome other than success) since ``since``, and since the
        last success of the same actor (or source): a person who got in starts again from nothing."""
        column, value = ("actor", actor) if actor is not None else ("source", source or "")
        last_ok = self.db.execute(
            f"SELECT MAX(ts) FROM audit WHERE kind = ? AND ts >= ? AND {column} = ? AND outcome = 'success'",
            [kind, since, value]).fetchone()[0]
        return self._scalar(
            f"SELECT COUNT(*) FROM audit WHERE kind = ? AND ts >= ? AND {column} = ? AND outcome = 'wrong-credentials'",
            [kind, max(since, float(last_ok or 0.0)), value])

    # -- health (read-only: what /healthz asks) -------------------------------------------------------------------

    def running_runs(self) -> list[dict[str, Any]]:
        """Runs that hold their job now (the job is running and this is its active run)."""
        return list(self.db.query(
            "SELECT r.* FROM runs r JOIN jobs j ON j.active_run_id = r.run_id WHERE j.state = ? ORDER BY r.started_at",
            [str(JobState.RUNNING)],
        ))

    def oldest_claimable_since(self) -> float | None:
        """Since when the longest-waiting claimable job (queued, its study processing) has been claimable."""
        row = self.db.execute(
            "SELECT MIN(MAX(j.updated_at, s.updated_at)) FROM jobs j JOIN studies s ON s.study_uid = j.study_uid "
            "WHERE j.state = ? AND s.state = ?", [str(JobState.QUEUED), str(StudyState.PROCESSING)],
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def last_run_activity(self) -> float | None:
        """When a run last started or finished."""
        row = self.db.execute("SELECT MAX(MAX(COALESCE(started_at, 0)), MAX(COALESCE(finished_at, 0))) FROM runs"
                              ).fetchone()
        return float(row[0]) if row and row[0] else None

    def overdue_deliveries(self, due_before: float) -> int:
        """Pending deliveries that were due before ``due_before`` and are still not attempted."""
        return self._scalar("SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND next_attempt_at < ?",
                            [due_before])

    # -- reporting ----------------------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for table in ("studies", "jobs", "runs", "outbox"):
            out[table] = {r[0]: r[1] for r in self.db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")}
        out["instances"] = {"total": self.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]}
        return out

    def deliveries_by_destination(self) -> dict[tuple[str, str], int]:
        """(destination, state) -> number of outbox items."""
        return {(r[0], r[1]): int(r[2]) for r in self.db.execute(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state")}

    def events(self, study_uid: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if study_uid is None:
            return list(self.db.query("SELECT * FROM events ORDER BY event_id DESC LIMIT ?", [limit]))
        return list(
            self.db.query("SELECT * FROM events WHERE study_uid = ? ORDER BY event_id DESC LIMIT ?", [study_uid, limit])
        )


    # -- web application: accounts, sessions, reads -----------------------------------------------------------

    def add_user(self, username: str, password_hash: str, role: str, now: float | None = None) -> None:
        """Create the account, or replace its password and role."""
        with self.transaction():
            self.db["users"].upsert(  # type: ignore[union-attr]
                {"username": username, "password_hash": password_hash, "role": role,
                 "created_at": time.time() if now is None else now, "disabled": 0}, pk="username")
            self.db.execute("DELETE FROM web_sessions WHERE username = ?", [username])  # a new password logs out

    def remove_user(self, username: str) -> bool:
        with self.transaction():
            gone = self.db.execute("DELETE FROM users WHERE username = ?", [username]).rowcount > 0
            self.db.execute("DELETE FROM web_sessions WHERE username = ?", [username])
        return gone

    def user(self, username: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM users WHERE username = ? AND NOT disabled", [username])

    def users(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT username, role, created_at, disabled FROM users ORDER BY username"))

    def open_session(self, token_sha256: str, username: str, csrf: str, expires_at: float) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM web_sessions WHERE expires_at < ?", [time.time()])
            self.db["web_sessions"].insert(  # type: ignore[union-attr]
                {"token_sha256": token_sha256, "username": username, "csrf": csrf, "created_at": time.time(),
                 "expires_at": expires_at})

    def session(self, token_sha256: str, now: float | None = None) -> dict[str, Any] | None:
        """The live session with its user's role; None when unknown, expired or its user is gone."""
        return self._one(
            "SELECT s.*, u.role FROM web_sessions s JOIN users u ON u.username = s.username "
            "WHERE s.token_sha256 = ? AND s.expires_at > ? AND NOT u.disabled",
            [token_sha256, time.time() if now is None else now])

    def close_session(self, token_sha256: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM web_sessions WHERE token_sha256 = ?", [token_sha256])

    def record_opened(self, study_uid: str, username: str, now: float | None = None) -> None:
        """The first time ``username`` opened the study's page (later openings keep the first time)."""
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO study_reads (read_id, study_uid, username, opened_at) VALUES (?, ?, ?, ?)",
                [f"{study_uid}/{username}", study_uid, username, time.time() if now is None else now])

    def reads(self, study_uid: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM study_reads WHERE study_uid = ? ORDER BY opened_at", [study_uid]))

    # -- feedback on the AI's results (node.feedback) --------------------------------------------------------------

    def record_feedback(self, study_uid: str, verdict: Verdict, username: str, *, finding_id: str | None = None,
                        reason: str = "", source: str = "", now: float | None = None) -> list[FeedbackRecord]:
        """Record a verdict, its audit record and (acknowledged) the reader's acknowledgement, in one transaction.

        A finding (``finding_id`` from the findings table) is confirmed or dismissed; a study is acknowledged, once
        per current run of its jobs (one row each, so every pipeline's result counts as seen), or once without a
        run when the AI left it without a result. The audit record names the reader, the verdict and the finding,
        and whether a reason was given, not the reason's free text."""
        now = time.time() if now is None else now
        verdict = parse_verdict(str(verdict), for_finding=finding_id is not None)
        reason = checked_reason(reason)
        with self.transaction():
            if self.study(study_uid) is None:
                raise FeedbackError(f"no study {study_uid} on this node")
            if finding_id is not None:
                found = self._one(
                    "SELECT f.run_id, f.tracking_id, r.pipeline, r.pipeline_version FROM findings f "
                    "JOIN runs r ON r.run_id = f.run_id WHERE f.finding_id = ? AND f.study_uid = ?",
                    [finding_id, study_uid])
                if found is None:
                    raise FeedbackError(f"no finding {finding_id!r} in study {study_uid}: reload the study's page")
                targets: list[tuple[str | None, ...]] = [(found["run_id"], finding_id[len(found["run_id"]) + 1:], found["tracking_id"],
                            found["pipeline"], found["pipeline_version"])]
            else:
                targets = [(r["run_id"], None, None, r["pipeline"], r["pipeline_version"]) for r in self.db.query(
                    "SELECT r.run_id, r.pipeline, r.pipeline_version FROM jobs j JOIN runs r "
                    "ON r.run_id = j.current_run_id WHERE j.study_uid = ? ORDER BY r.pipeline", [study_uid])]
                targets = targets or [(None, None, None, None, None)]
            records = []
            for run_id, tracking_uid, tracking_id, pipeline, version in targets:
                row: dict[str, Any] = {
                    "study_uid": study_uid, "run_id": run_id, "tracking_uid": tracking_uid, "tracking_id": tracking_id,
                    "pipeline": pipeline, "pipeline_version": version, "verdict": str(verdict), "reason": reason,
                    "username": username, "ts": now}
                feedback_id = int(self.db["feedback"].insert(row).last_pk)  # type: ignore[union-attr, arg-type]
                records.append(FeedbackRecord(feedback_id=feedback_id, **{**row, "verdict": verdict}))
                self._audit(FEEDBACK_AUDIT_KIND, str(verdict), username, source, study_uid, {
                    "feedback_id": feedback_id, "run_id": run_id, "tracking_uid": tracking_uid,
                    "tracking_id": tracking_id, "pipeline": pipeline, "pipeline_version": version,
                    "reason_given": bool(reason)}, now)
            if verdict == Verdict.ACKNOWLEDGED:  # the worklist's timer: the first acknowledgement counts
                read_id = f"{study_uid}/{username}"
                self.db.execute("INSERT OR IGNORE INTO study_reads (read_id, study_uid, username, opened_at) "
                                "VALUES (?, ?, ?, ?)", [read_id, study_uid, username, now])
                self.db.execute("UPDATE study_reads SET acknowledged_at = ? WHERE read_id = ? "
                                "AND acknowledged_at IS NULL", [now, read_id])
            self._event("feedback", study_uid, detail=f"{verdict} " + ", ".join(
                t[2] or "study" for t in targets))  # also what makes open worklists refresh
        return records

    def feedback_of_study(self, study_uid: str) -> list[FeedbackRecord]:
        """Each reader's current verdict on each finding of the study (and each acknowledgement), oldest first."""
        rows = self.db.query(
            "SELECT * FROM feedback WHERE feedback_id IN (SELECT MAX(feedback_id) FROM feedback WHERE study_uid = ? "
            "GROUP BY COALESCE(run_id, ''), COALESCE(tracking_uid, ''), username) ORDER BY feedback_id", [study_uid])
        return [FeedbackRecord(**{**r, "verdict": Verdict(r["verdict"]), "reason": r["reason"] or ""}) for r in rows]

    def feedback_rates(self) -> list[FeedbackRate]:
        """Per pipeline version: findings reviewed, confirmed, dismissed; their rates carry 95% Wilson intervals."""
        return rates([(r[0], r[1], r[2], r[3], r[4]) for r in self.db.execute(
            "SELECT pipeline, pipeline_version, run_id || '/' || tracking_uid, username, verdict FROM feedback "
            "WHERE tracking_uid IS NOT NULL AND verdict IN (?, ?) ORDER BY feedback_id",
            [str(Verdict.CONFIRMED), str(Verdict.DISMISSED)])])

    def feedback_counts(self) -> dict[tuple[str, str], int]:
        """(pipeline, verdict) -> feedback rows recorded (every click; '' for a study without a result)."""
        return {(r[0], r[1]): int(r[2]) for r in self.db.execute(
            "SELECT COALESCE(pipeline, ''), verdict, COUNT(*) FROM feedback GROUP BY 1, 2")}

    def change_mark(self) -> tuple[int, float]:
        """Changes whenever a study or job changes: the last event's id and the latest update of either."""
        row = self.db.execute(
            "SELECT (SELECT COALESCE(MAX(event_id), 0) FROM events), "
            "(SELECT COALESCE(MAX(COALESCE(updated_at, last_received_at)), 0) FROM studies), "
            "(SELECT COALESCE(MAX(updated_at), 0) FROM jobs)").fetchone()
        return int(row[0]), max(float(row[1]), float(row[2]))


def is_final(study: dict[str, Any]) -> bool:
    return study["state"] in FINAL_STUDY_STATES
