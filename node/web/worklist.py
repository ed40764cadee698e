"""The worklist: every study the node received, its AI status and why, its AI priority, and its timers.

Built from the store (studies, jobs, runs, findings, reads) and, for the patient's name and ID, the header of one
stored instance: those two go only to the authenticated worklist page, never to a log or the JSON API. A study is
listed whatever its AI did (failed, late, nothing found): the AI only orders the list, it never filters it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from node.priority import DEFAULT_RULES, Priority, PriorityDecision, PriorityRule, RankedFinding, decide
from node.states import JobState, StudyState
from node.store import Store


class AiStatus(StrEnum):
    WAITING = "waiting"  # receiving, or complete and queued
    ANALYSING = "analysing"  # a pipeline runs on it
    DONE = "done"  # every routed pipeline has results
    NOT_ANALYSED = "not analysed"  # no pipeline is made for it (the reason says which rule)
    FAILED = "failed"  # a pipeline gave up; the reason is its error


@dataclass(frozen=True)
class TopFinding:
    """The finding the worklist shows: the one that set the study's priority, else its most probable one."""

    class_meaning: str
    probability: float
    pipeline: str
    pipeline_version: str


@dataclass(frozen=True)
class PatientHeader:
    name: str
    patient_id: str
    study_description: str


@dataclass(frozen=True)
class WorklistRow:
    study_uid: str
    arrived_at: float | None
    modalities: tuple[str, ...]
    description: str
    status: AiStatus
    reason: str
    decision: PriorityDecision  # the site's priority rules on the current findings (routine: none matched)
    top_finding: TopFinding | None
    n_findings: int
    result_at: float | None  # the first current result of the study's jobs
    opened_at: float | None  # the first time a person opened its page
    acknowledged_at: float | None  # (feedback: a later step records it)
    patient: PatientHeader | None

    @property
    def priority(self) -> Priority:
        """A study without an AI result (waiting, failed, not analysed) is routine: the AI may raise a study above
        the rest, never bury one below them."""
        return self.decision.priority

    @property
    def badge(self) -> str:
        if self.status in (AiStatus.FAILED, AiStatus.NOT_ANALYSED):
            return str(self.status)
        if self.n_findings == 0:
            return "no finding" if self.status == AiStatus.DONE else str(self.status)
        return self.priority.code


def ranked(findings: Iterable[dict[str, Any]], versions: dict[str, tuple[str, str]]) -> list[RankedFinding]:
    """Finding rows of the store, with the pipeline and version of their run (``versions``: run_id -> both)."""
    return [RankedFinding(f["class_scheme"], f["class_value"], f["class_meaning"], float(f["probability"]),
                          *versions[f["run_id"]]) for f in findings]


def top_finding(findings: Sequence[RankedFinding], decision: PriorityDecision) -> TopFinding | None:
    """The finding that set the priority; when no rule matched, the most probable finding."""
    chosen = decision.finding or max(findings, key=lambda f: f.probability, default=None)
    if chosen is None:
        return None
    return TopFinding(chosen.class_meaning, chosen.probability, chosen.pipeline, chosen.pipeline_version)


def ai_status(study: dict[str, Any], jobs: Sequence[dict[str, Any]]) -> tuple[AiStatus, str]:
    """Where the AI is with the study, and why, in words a reader understands."""
    state = study["state"]
    reason = study["state_reason"] or ""
    if state == StudyState.NO_PIPELINE:
        return AiStatus.NOT_ANALYSED, reason or "no pipeline is routed for this study"
    if state == StudyState.FAILED:
        errors = [f"{j['pipeline']}: {j['error'] or j['state_reason'] or 'failed'}"
                  for j in jobs if j["state"] == JobState.FAILED]
        return AiStatus.FAILED, "; ".join(errors) or reason
    if state == StudyState.RECEIVING:
        return AiStatus.WAITING, f"receiving images ({study['instance_count'] or 0} so far)"
    if jobs and all(j["current_run_id"] for j in jobs) and not any(j["state"] == JobState.RUNNING for j in jobs):
        # the jobs say where their results are (delivering, delivered, kept locally); the study's own reason
        # ("processing: ...") lags while results are still being delivered
        return AiStatus.DONE, "; ".join(sorted({j["state_reason"] for j in jobs if j["state_reason"]})) or reason
    if any(j["state"] == JobState.RUNNING for j in jobs):
        return AiStatus.ANALYSING, ", ".join(j["pipeline"] for j in jobs if j["state"] == JobState.RUNNING)
    return AiStatus.WAITING, reason or "queued"


def read_patient_header(path: str) -> PatientHeader | None:
    """Name, ID and study description from a stored instance; None when the file is gone or unreadable."""
    if not Path(path).exists():
        return None
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID", "StudyDescription"])
    except (InvalidDicomError, OSError):
        return None
    return PatientHeader(str(ds.get("PatientName", "") or "").replace("^", " ").strip(),
                         str(ds.get("PatientID", "") or ""), str(ds.get("StudyDescription", "") or ""))


def worklist_row(store: Store, study: dict[str, Any],
                 header: Callable[[str], PatientHeader | None] | None = None,
                 rules: Sequence[PriorityRule] = DEFAULT_RULES) -> WorklistRow:
    """One study's row; ``header`` reads the patient header of an instance path (None: leave the patient out);
    ``rules`` are the site's priority rules."""
    study_uid = study["study_uid"]
    jobs = store.jobs(study_uid)
    status, reason = ai_status(study, jobs)
    versions: dict[str, tuple[str, str]] = {}
    findings: list[dict[str, Any]] = []
    result_times: list[float] = []
    for job in jobs:
        run = store.current_run(job["job_id"])
        if run is None:
            continue
        versions[run["run_id"]] = (run["pipeline"], run["pipeline_version"])
        findings += store.findings_of_run(run["run_id"])
        if run["finished_at"] is not None:
            result_times.append(float(run["finished_at"]))
    candidates = ranked(findings, versions)
    decision = decide(candidates, rules)
    instances = store.study_instances(study_uid)
    reads = store.reads(study_uid)
    patient = header(instances[0]["path"]) if header is not None and instances else None
    descriptions = sorted({i["series_description"] for i in instances if i["series_description"]})
    return WorklistRow(
        study_uid=study_uid, arrived_at=study["first_received_at"],
        modalities=tuple(sorted({i["modality"] for i in instances if i["modality"]})),
        description=(patient.study_description if patient and patient.study_description else ", ".join(descriptions)),
        status=status, reason=reason, decision=decision, top_finding=top_finding(candidates, decision),
        n_findings=len(findings), result_at=min(result_times) if result_times else None,
        opened_at=min((r["opened_at"] for r in reads), default=None),
        acknowledged_at=min((r["acknowledged_at"] for r in reads if r["acknowledged_at"]), default=None),
        patient=patient,
    )


def ordered(rows: Iterable[WorklistRow]) -> list[WorklistRow]:
    """Highest AI priority first; within a priority, the study that arrived first (it has waited longest)."""
    return sorted(rows, key=lambda r: (-int(r.priority), r.arrived_at if r.arrived_at is not None else float("inf")))


def worklist(store: Store, header: Callable[[str], PatientHeader | None] | None = None, *,
             status: str | None = None, modality: str | None = None, limit: int = 500,
             rules: Sequence[PriorityRule] = DEFAULT_RULES, min_priority: Priority | None = None) -> list[WorklistRow]:
    """Every study (up to ``limit``, the latest), ordered; the filters narrow by AI status, modality and AI priority
    (``min_priority`` and above)."""
    rows = [worklist_row(store, s, header, rules) for s in store.studies(limit)]
    if status:
        rows = [r for r in rows if r.status == status]
    if modality:
        rows = [r for r in rows if modality in r.modalities]
    if min_priority is not None:
        rows = [r for r in rows if r.priority >= min_priority]
    return ordered(rows)


def duration(start: float | None, end: float | None) -> str:
    """'1 h 02 min', '3 min 05 s', '42 s'; '' when either end is missing."""
    if start is None or end is None:
        return ""
    seconds = max(0, int(round(end - start)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"
