"""The one SQLite schema (sqlite-utils, WAL): instances, studies, jobs, results, outbox, events.

Every state change of a study or job is one transaction here, so the node can be killed anywhere and resume.
One ``Store`` per thread: SQLite connections are not shared across threads.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

# Study states: receiving -> complete -> processing -> sent | failed | no-pipeline
# Job states:   queued -> running -> sending -> sent | failed
UNFINISHED_JOB_STATES = ("queued", "running", "sending")

_SCHEMA: dict[str, tuple[dict[str, Any], str]] = {
    "instances": (
        {
            "sop_instance_uid": str, "study_uid": str, "series_uid": str, "sop_class_uid": str, "modality": str,
            "body_part": str, "series_description": str, "transfer_syntax": str, "path": str, "size": int,
            "calling_ae": str, "received_at": float,
        },
        "sop_instance_uid",
    ),
    "studies": (
        {
            "study_uid": str, "patient_id": str, "patient_age": float, "patient_sex": str, "study_date": str,
            "state": str, "instance_count": int, "expected_count": int, "expected_checked_at": float,
            "first_received_at": float, "last_received_at": float, "completed_at": float,
            "completed_reason": str, "updated_at": float,
        },
        "study_uid",
    ),
    "jobs": (
        {
            "job_id": str, "study_uid": str, "pipeline": str, "pipeline_version": str, "state": str,
            "attempts": int, "lease_until": float, "lease_owner": str, "error": str, "created_at": float,
            "updated_at": float, "timings": str, "fhir_status": str, "n_findings": int, "inputs_missing": str,
            "sr_sop_uid": str,
        },
        "job_id",
    ),
    "results": (
        {"sop_instance_uid": str, "job_id": str, "study_uid": str, "kind": str, "path": str, "created_at": float},
        "sop_instance_uid",
    ),
    "outbox": (
        {
            "item_id": str, "sop_instance_uid": str, "job_id": str, "destination": str, "path": str, "state": str,
            "attempts": int, "next_attempt_at": float, "last_error": str, "sent_at": float, "created_at": float,
        },
        "item_id",
    ),
}


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
            self.db[name].create(columns, pk=pk, if_not_exists=True)  # type: ignore[union-attr]
        if "events" not in self.db.table_names():
            self.db["events"].create(  # type: ignore[union-attr]
                {"event_id": int, "ts": float, "study_uid": str, "job_id": str, "event": str, "detail": str},
                pk="event_id",
            )
        self.db["instances"].create_index(["study_uid"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["jobs"].create_index(["state"], if_not_exists=True)  # type: ignore[union-attr]
        self.db["outbox"].create_index(["state", "next_attempt_at"], if_not_exists=True)  # type: ignore[union-attr]

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

    def _event(self, event: str, study_uid: str = "", job_id: str = "", detail: str = "") -> None:
        self.db["events"].insert(  # type: ignore[union-attr]
            {"ts": time.time(), "study_uid": study_uid, "job_id": job_id, "event": event, "detail": detail}
        )

    def record_event(self, event: str, study_uid: str = "", job_id: str = "", detail: str = "") -> None:
        with self.transaction():
            self._event(event, study_uid, job_id, detail)

    # -- instances and studies -------------------------------------------------------------------------------

    def index_instance(self, inst: IndexedInstance, now: float | None = None) -> bool:
        """Record a stored instance; returns False when the SOP Instance UID was already indexed (idempotent)."""
        now = time.time() if now is None else now
        with self.transaction():
            known = self.db.execute(
                "SELECT 1 FROM instances WHERE sop_instance_uid = ?", [inst.sop_instance_uid]
            ).fetchone()
            if known:
                return False
            self.db["instances"].insert(  # type: ignore[union-attr]
                {
                    "sop_instance_uid": inst.sop_instance_uid, "study_uid": inst.study_uid,
                    "series_uid": inst.series_uid, "sop_class_uid": inst.sop_class_uid, "modality": inst.modality,
                    "body_part": inst.body_part, "series_description": inst.series_description,
                    "transfer_syntax": inst.transfer_syntax, "path": inst.path, "size": inst.size,
                    "calling_ae": inst.calling_ae, "received_at": now,
                }
            )
            study = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [inst.study_uid]).fetchone()
            if study is None:
                self.db["studies"].insert(  # type: ignore[union-attr]
                    {
                        "study_uid": inst.study_uid, "patient_id": inst.patient_id,
                        "patient_age": inst.patient_age, "patient_sex": inst.patient_sex,
                        "study_date": inst.study_date, "state": "receiving", "instance_count": 1,
                        "expected_count": None, "expected_checked_at": None, "first_received_at": now,
                        "last_received_at": now, "completed_at": None, "completed_reason": None, "updated_at": now,
                    }
                )
                self._event("study-opened", inst.study_uid)
            else:
                # A late instance re-opens a finished study: it is assembled and processed again with the new input.
                self.db.execute(
                    "UPDATE studies SET instance_count = instance_count + 1, last_received_at = ?, updated_at = ?, "
                    "state = 'receiving', completed_at = NULL, completed_reason = NULL WHERE study_uid = ?",
                    [now, now, inst.study_uid],
                )
                if study[0] != "receiving":
                    self._event("study-reopened", inst.study_uid, detail=f"late instance after state {study[0]}")
        return True

    def study(self, study_uid: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM studies WHERE study_uid = ?", [study_uid]))
        return rows[0] if rows else None

    def studies(self, limit: int = 500) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM studies ORDER BY last_received_at DESC LIMIT ?", [limit]))

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM instances WHERE study_uid = ? ORDER BY received_at", [study_uid]))

    def studies_in_state(self, state: str) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM studies WHERE state = ?", [state]))

    def set_expected_count(self, study_uid: str, expected: int | None, now: float) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE studies SET expected_count = ?, expected_checked_at = ? WHERE study_uid = ?",
                [expected, now, study_uid],
            )

    def complete_study(self, study_uid: str, reason: str, jobs: list[tuple[str, str]], now: float | None = None) -> bool:
        """Mark a receiving study complete and queue one job per (pipeline, version), in one transaction.

        Returns False if the study was not in state 'receiving' (another thread completed it first).
        """
        now = time.time() if now is None else now
        with self.transaction():
            row = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [study_uid]).fetchone()
            if row is None or row[0] != "receiving":
                return False
            state = "processing" if jobs else "no-pipeline"
            self.db.execute(
                "UPDATE studies SET state = ?, completed_at = ?, completed_reason = ?, updated_at = ? "
                "WHERE study_uid = ?",
                [state, now, reason, now, study_uid],
            )
            self._event("study-complete", study_uid, detail=reason)
            if not jobs:
                self._event("no-pipeline", study_uid, detail="no routing rule matched")
            for pipeline, version in jobs:
                job_id = f"{study_uid}/{pipeline}"
                self.db["jobs"].upsert(  # type: ignore[union-attr]
                    {
                        "job_id": job_id, "study_uid": study_uid, "pipeline": pipeline, "pipeline_version": version,
                        "state": "queued", "attempts": 0, "lease_until": None, "lease_owner": None, "error": None,
                        "created_at": now, "updated_at": now, "timings": "{}",
                    },
                    pk="job_id",
                )
                self._event("job-queued", study_uid, job_id)
        return True

    def request_processing(self, study_uid: str) -> bool:
        """Manual trigger: mark the study's quiet period over now, whatever its state. False if unknown."""
        with self.transaction():
            row = self.db.execute("SELECT state FROM studies WHERE study_uid = ?", [study_uid]).fetchone()
            if row is None:
                return False
            self.db.execute(
                "UPDATE studies SET state = 'receiving', expected_count = instance_count, updated_at = ? "
                "WHERE study_uid = ?",
                [time.time(), study_uid],
            )
            self._event("manual-trigger", study_uid)
        return True

    # -- jobs ---------------------------------------------------------------------------------------------------

    def claim_job(self, owner: str, lease_seconds: float, now: float | None = None) -> dict[str, Any] | None:
        """Claim the oldest queued job, or one whose lease expired; never deletes it (a kill loses nothing)."""
        now = time.time() if now is None else now
        with self.transaction():
            row = self.db.execute(
                "SELECT job_id FROM jobs WHERE state = 'queued' OR (state = 'running' AND lease_until < ?) "
                "ORDER BY created_at LIMIT 1",
                [now],
            ).fetchone()
            if row is None:
                return None
            self.db.execute(
                "UPDATE jobs SET state = 'running', lease_until = ?, lease_owner = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE job_id = ?",
                [now + lease_seconds, owner, now, row[0]],
            )
            self._event("job-running", job_id=row[0])
        return dict(next(self.db.query("SELECT * FROM jobs WHERE job_id = ?", [row[0]])))

    def release_leases_of_dead_owners(self, live_owner: str) -> int:
        """At start-up no other worker of this node is alive: hand every running job back to the queue."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE jobs SET state = 'queued', lease_until = NULL, lease_owner = NULL "
                "WHERE state = 'running' AND (lease_owner IS NULL OR lease_owner != ?)",
                [live_owner],
            )
            return int(cur.rowcount)

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = list(self.db.query("SELECT * FROM jobs WHERE job_id = ?", [job_id]))
        return rows[0] if rows else None

    def jobs(self, study_uid: str | None = None) -> list[dict[str, Any]]:
        if study_uid is None:
            return list(self.db.query("SELECT * FROM jobs ORDER BY created_at DESC"))
        return list(self.db.query("SELECT * FROM jobs WHERE study_uid = ? ORDER BY created_at", [study_uid]))

    def finish_job_with_results(
        self,
        job_id: str,
        results: list[tuple[str, str, str]],
        destination: str | None,
        summary: dict[str, Any],
        now: float | None = None,
    ) -> None:
        """Record result files (sop_uid, kind, path) and queue them for delivery, in one transaction."""
        now = time.time() if now is None else now
        with self.transaction():
            job = self.db.execute("SELECT study_uid FROM jobs WHERE job_id = ?", [job_id]).fetchone()
            study_uid = job[0]
            for sop_uid, kind, path in results:
                self.db["results"].upsert(  # type: ignore[union-attr]
                    {"sop_instance_uid": sop_uid, "job_id": job_id, "study_uid": study_uid, "kind": kind,
                     "path": path, "created_at": now},
                    pk="sop_instance_uid",
                )
                if destination is not None:
                    item_id = f"{destination}/{sop_uid}"
                    exists = self.db.execute("SELECT state FROM outbox WHERE item_id = ?", [item_id]).fetchone()
                    if exists is None:
                        self.db["outbox"].insert(  # type: ignore[union-attr]
                            {"item_id": item_id, "sop_instance_uid": sop_uid, "job_id": job_id,
                             "destination": destination, "path": path, "state": "pending", "attempts": 0,
                             "next_attempt_at": now, "last_error": None, "sent_at": None, "created_at": now}
                        )
            new_state = "sending" if destination is not None else "sent"
            self.db.execute(
                "UPDATE jobs SET state = ?, lease_until = NULL, updated_at = ?, timings = ?, fhir_status = ?, "
                "n_findings = ?, inputs_missing = ?, sr_sop_uid = ?, error = NULL WHERE job_id = ?",
                [new_state, now, json.dumps(summary["timings"]), summary["fhir_status"], summary["n_findings"],
                 ",".join(summary["inputs_missing"]), summary["sr_sop_uid"], job_id],
            )
            self._event("results-written", study_uid, job_id, detail=f"{len(results)} objects")
            self._settle_study(study_uid, now)

    def fail_job(self, job_id: str, error: str, retry: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction():
            row = self.db.execute("SELECT study_uid FROM jobs WHERE job_id = ?", [job_id]).fetchone()
            self.db.execute(
                "UPDATE jobs SET state = ?, error = ?, lease_until = NULL, updated_at = ? WHERE job_id = ?",
                ["queued" if retry else "failed", error[:2000], now, job_id],
            )
            self._event("job-error" if retry else "job-failed", row[0], job_id, detail=error[:500])
            self._settle_study(row[0], now)

    def _settle_study(self, study_uid: str, now: float) -> None:
        """A study is sent when all its jobs are sent, failed when any failed and none is unfinished."""
        states = [r[0] for r in self.db.execute("SELECT state FROM jobs WHERE study_uid = ?", [study_uid])]
        if not states or any(s in UNFINISHED_JOB_STATES for s in states):
            return
        study_state = "failed" if "failed" in states else "sent"
        self.db.execute(
            "UPDATE studies SET state = ?, updated_at = ? WHERE study_uid = ? AND state = 'processing'",
            [study_state, now, study_uid],
        )

    def set_job_timings(self, job_id: str, timings: dict[str, float]) -> None:
        with self.transaction():
            self.db.execute("UPDATE jobs SET timings = ? WHERE job_id = ?", [json.dumps(timings), job_id])

    # -- outbox -------------------------------------------------------------------------------------------------

    def due_outbox(self, now: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        return list(
            self.db.query(
                "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY created_at LIMIT ?",
                [now, limit],
            )
        )

    def outbox_items(self, state: str | None = None) -> list[dict[str, Any]]:
        if state is None:
            return list(self.db.query("SELECT * FROM outbox ORDER BY created_at"))
        return list(self.db.query("SELECT * FROM outbox WHERE state = ? ORDER BY created_at", [state]))

    def outbox_sent(self, item_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL "
                "WHERE item_id = ?",
                [now, item_id],
            )
            self._after_outbox_change(item_id, now)

    def outbox_failed(self, item_id: str, error: str, next_attempt_at: float | None, now: float | None = None) -> None:
        """Record a failed send; ``next_attempt_at`` None means the item is dead-lettered."""
        now = time.time() if now is None else now
        with self.transaction():
            self.db.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE item_id = ?",
                ["pending" if next_attempt_at is not None else "dead", error[:1000], next_attempt_at or now, item_id],
            )
            if next_attempt_at is None:
                self._event("outbox-dead", detail=f"{item_id}: {error[:300]}")
            self._after_outbox_change(item_id, now)

    def retry_dead(self) -> int:
        with self.transaction():
            cur = self.db.execute(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ? WHERE state = 'dead'",
                [time.time()],
            )
            jobs = self.db.execute("SELECT DISTINCT job_id FROM outbox WHERE state = 'pending'").fetchall()
            for (job_id,) in jobs:
                self.db.execute("UPDATE jobs SET state = 'sending' WHERE job_id = ? AND state = 'failed'", [job_id])
                self.db.execute(
                    "UPDATE studies SET state = 'processing' WHERE study_uid = "
                    "(SELECT study_uid FROM jobs WHERE job_id = ?) AND state = 'failed'",
                    [job_id],
                )
            return int(cur.rowcount)

    def _after_outbox_change(self, item_id: str, now: float) -> None:
        job_id = self.db.execute("SELECT job_id FROM outbox WHERE item_id = ?", [item_id]).fetchone()[0]
        states = {r[0] for r in self.db.execute("SELECT state FROM outbox WHERE job_id = ?", [job_id])}
        if "pending" in states:
            return
        job_state = "failed" if "dead" in states else "sent"
        row = self.db.execute("SELECT study_uid FROM jobs WHERE job_id = ?", [job_id]).fetchone()
        self.db.execute(
            "UPDATE jobs SET state = ?, updated_at = ?, error = ? WHERE job_id = ? AND state = 'sending'",
            [job_state, now, "delivery failed: see outbox" if job_state == "failed" else None, job_id],
        )
        self._event(f"job-{job_state}", row[0], job_id)
        self._settle_study(row[0], now)

    # -- reporting ----------------------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for table in ("studies", "jobs", "outbox"):
            out[table] = {r[0]: r[1] for r in self.db.execute(f"SELECT state, COUNT(*) FROM {table} GROUP BY state")}
        out["instances"] = {"total": self.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]}
        return out

    def events(self, study_uid: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        if study_uid is None:
            return list(self.db.query("SELECT * FROM events ORDER BY event_id DESC LIMIT ?", [limit]))
        return list(
            self.db.query("SELECT * FROM events WHERE study_uid = ? ORDER BY event_id DESC LIMIT ?", [study_uid, limit])
        )
