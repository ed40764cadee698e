"""The watchdog: finds any study or job that has not moved within its state's time and resumes it or fails it.

It runs in its own thread, so a stuck assembler or worker does not stop it. Every action is a checked transition
in the store with the reason recorded on the row and as an event; nothing here decides what a study *should* be,
it only re-applies the rules the other stages apply (completion, settling) or fails with a reason.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from node.config import Settings
from node.listener import uid_digest
from node.states import JobState, StudyState
from node.store import Store

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, store: Store, settings: Settings, complete: Callable[[str, str], bool]) -> None:
        self.store = store
        self.settings = settings
        self.complete = complete  # the assembler's completion (routing included)

    def tick(self, now: float | None = None) -> list[str]:
        """One pass; returns what it did, one line per action (also logged and recorded as events)."""
        now = time.time() if now is None else now
        w, a = self.settings.watchdog, self.settings.assembly
        actions: list[str] = []

        overdue = now - max(a.quiet_seconds, a.reopen_debounce_seconds) - w.receiving_grace_seconds
        for study in self.store.studies_in_state(StudyState.RECEIVING):
            if float(study["last_received_at"]) < overdue:
                why = f"watchdog: still receiving {w.receiving_grace_seconds:g} s past its quiet period"
                if self.complete(study["study_uid"], why):
                    actions.append(f"completed study {uid_digest(study['study_uid'])}: {why}")

        for study in self.store.studies_in_state(StudyState.PROCESSING):
            jobs = self.store.jobs(study["study_uid"])
            if jobs and all(j["state"] not in (JobState.QUEUED, JobState.RUNNING, JobState.SENDING) for j in jobs):
                self.store.settle(study["study_uid"], "watchdog: every job had finished")
                actions.append(f"settled study {uid_digest(study['study_uid'])}")

        for job in self.store.stale("jobs", [str(JobState.SENDING)], now - w.interval_seconds):
            if self.store.settle_job_deliveries(job["job_id"], "watchdog: no delivery of its results was pending"):
                actions.append(f"settled deliveries of job {uid_digest(job['job_id'])}")

        stuck_before = now - w.job_stuck_seconds
        for state in (JobState.QUEUED, JobState.RUNNING):
            for job in self.store.stale("jobs", [str(state)], stuck_before):
                owner = self.store.study(job["study_uid"])
                if owner is not None and owner["state"] == StudyState.RECEIVING:
                    continue  # waits for its re-opened study to complete again: not stuck
                why = (f"watchdog: {state} for more than {w.job_stuck_seconds:g} s without progress"
                       + (" (the run did not finish)" if state == JobState.RUNNING else " (never started)"))
                if self.store.fail_stuck_job(job["job_id"], state, why):
                    actions.append(f"failed job {uid_digest(job['job_id'])}: {why}")
        for line in actions:
            log.warning("%s", line)
        return actions
