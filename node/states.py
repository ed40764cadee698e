"""The study, job and run state machines: the one written-down list of states, transitions and who makes each.

The store enforces it: every transition is one transaction that checks the state it comes from (``UPDATE ...
WHERE state IN (<allowed sources>)``), so a late writer can never overwrite a newer state. The README's
"Lifecycle of a study" section is this module in prose.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    RECEIVING = "receiving"  # instances arriving (first time, or re-opened by a late routed instance)
    PROCESSING = "processing"  # complete; at least one job not finished
    SENT = "sent"  # every job delivered (or had nothing new to deliver)
    FAILED = "failed"  # a job failed and none is unfinished; the reason is on the job
    NO_PIPELINE = "no-pipeline"  # complete, and no routing rule matched any instance


class JobState(StrEnum):
    """One job per (study, pipeline); it is re-queued, never duplicated, when its inputs change."""

    QUEUED = "queued"  # waiting for the worker; claimable only while its study is PROCESSING
    RUNNING = "running"  # claimed with a lease by one worker
    SENDING = "sending"  # its current run's results are in the outbox
    SENT = "sent"  # its current run's results are delivered (or kept locally when no PACS is configured)
    FAILED = "failed"  # gave up; ``error`` says why


class RunState(StrEnum):
    """One row per execution of a job: what it read, what it wrote, and whether that is still current."""

    RUNNING = "running"
    SENDING = "sending"  # results queued for delivery
    SENT = "sent"  # results delivered
    UNCHANGED = "unchanged"  # same inputs as the current results: nothing new written or sent
    SUPERSEDED = "superseded"  # a later run of the same job amends these results (or they were outdated unsent)
    FAILED = "failed"


FINAL_STUDY_STATES = frozenset({StudyState.SENT, StudyState.FAILED, StudyState.NO_PIPELINE})
UNFINISHED_JOB_STATES = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.SENDING})

# (from, to) -> who makes the transition. Anything not listed is refused by the store.
STUDY_TRANSITIONS: dict[tuple[StudyState | None, StudyState], str] = {
    (None, StudyState.RECEIVING): "listener: first instance of the study",
    (StudyState.RECEIVING, StudyState.PROCESSING): "assembler: complete, at least one pipeline routed",
    (StudyState.RECEIVING, StudyState.NO_PIPELINE): "assembler: complete, no routing rule matched",
    (StudyState.PROCESSING, StudyState.SENT): "worker/outbox/assembler: no job unfinished, none failed",
    (StudyState.PROCESSING, StudyState.FAILED): "worker/outbox/assembler: no job unfinished, one failed",
    (StudyState.PROCESSING, StudyState.RECEIVING): "listener: late instance a pipeline reads; or reprocess",
    (StudyState.SENT, StudyState.RECEIVING): "listener: late instance a pipeline reads; or reprocess",
    (StudyState.FAILED, StudyState.RECEIVING): "listener: late instance a pipeline reads; or reprocess",
    (StudyState.NO_PIPELINE, StudyState.RECEIVING): "listener: late instance a pipeline reads; or reprocess",
    (StudyState.FAILED, StudyState.PROCESSING): "operator: outbox retry re-queues its deliveries",
}

JOB_TRANSITIONS: dict[tuple[JobState | None, JobState], str] = {
    (None, JobState.QUEUED): "assembler: study complete and routed to the pipeline",
    (JobState.QUEUED, JobState.RUNNING): "worker: claim with a lease",
    (JobState.RUNNING, JobState.RUNNING): "worker: claim again after the lease expired",
    (JobState.RUNNING, JobState.SENDING): "worker: results written and queued for delivery",
    (JobState.RUNNING, JobState.SENT): "worker: nothing new to send, or no PACS configured",
    (JobState.RUNNING, JobState.QUEUED): "worker: error to retry, inputs changed during the run; start-up: lease of a dead process",
    (JobState.RUNNING, JobState.FAILED): "worker: error after the last attempt; watchdog: stuck in the run",
    (JobState.SENDING, JobState.SENT): "outbox: every object of the current run delivered",
    (JobState.SENDING, JobState.FAILED): "outbox: an object dead-lettered; watchdog: stuck",
    (JobState.SENDING, JobState.QUEUED): "assembler: inputs changed (re-run) or reprocess",
    (JobState.SENT, JobState.QUEUED): "assembler: inputs changed (re-run) or reprocess",
    (JobState.FAILED, JobState.QUEUED): "assembler: inputs changed (re-run) or reprocess",
    (JobState.FAILED, JobState.SENDING): "operator: outbox retry",
    (JobState.QUEUED, JobState.FAILED): "watchdog: never claimed within the configured time",
}


def study_sources(to: StudyState) -> tuple[str, ...]:
    """The states a study may enter ``to`` from (for the store's ``WHERE state IN (...)``)."""
    return tuple(str(f) for (f, t) in STUDY_TRANSITIONS if t == to and f is not None)


def job_sources(to: JobState) -> tuple[str, ...]:
    return tuple(str(f) for (f, t) in JOB_TRANSITIONS if t == to and f is not None)
