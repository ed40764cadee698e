"""Study assembly: decides when a receiving study is complete, and (re-)queues the jobs whose inputs changed.

Complete = the instance count reached the PACS's count of the study's instances that are not the node's own
results (C-FIND per series, where [pacs] is set), or ``quiet_seconds`` passed without a new instance, or a
manual ``dicom-ai-node process`` / ``reprocess``. A re-opened study (a late instance a pipeline reads) asks the
PACS again, and is complete by count only ``reopen_debounce_seconds`` after its last instance, so a trickle of
late instances gives one re-run. Series are selected here, once, and stored with the job.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from node.config import Settings
from node.listener import uid_digest
from node.router import instances_for, pipelines_for
from node.store import JobPlan, Store

log = logging.getLogger(__name__)

# (study UID, series UIDs to leave out) -> instances the PACS holds for the study, None when it does not know it
CountQuery = Callable[[str, set[str]], int | None]


class Assembler:
    """Call ``tick()`` periodically (one thread); it never blocks on anything but the PACS query."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        version_of: Callable[[str], str],
        count_in_pacs: CountQuery | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.version_of = version_of
        self.count_in_pacs = count_in_pacs
        # Ask the PACS again at most this often per study: its count grows while it is still receiving.
        self.recheck_seconds = max(1.0, settings.assembly.quiet_seconds / 4)

    def tick(self, now: float | None = None) -> list[str]:
        """Complete every study that is ready; returns their UIDs."""
        now = time.time() if now is None else now
        completed: list[str] = []
        for study in self.store.studies_in_state("receiving"):
            reason = self.ready(study, now)
            if reason is not None and self.complete(study["study_uid"], reason, now, study["reprocess"]):
                completed.append(study["study_uid"])
        return completed

    def ready(self, study: dict[str, Any], now: float) -> str | None:
        """Why the study is complete now, or None while it is still receiving."""
        if study["complete_now"]:
            return str(study["complete_now"])
        uid = str(study["study_uid"])
        count = int(study["instance_count"] or 0)
        quiet = now - float(study["last_received_at"])
        expected = study["expected_count"]
        if expected is None and self.count_in_pacs is not None:
            checked = study["expected_checked_at"]
            if checked is None or now - float(checked) >= self.recheck_seconds:
                expected = self._query(uid, now)
        reopened = int(study["reopen_count"] or 0) > 0
        if expected is not None and count >= int(expected):
            if not reopened or quiet >= self.settings.assembly.reopen_debounce_seconds:
                return f"instance count {count} reached the expected {expected}"
        if quiet >= self.settings.assembly.quiet_seconds:
            return f"no new instance for {self.settings.assembly.quiet_seconds:g} s"
        return None

    def _query(self, study_uid: str, now: float) -> int | None:
        assert self.count_in_pacs is not None
        try:
            expected = self.count_in_pacs(study_uid, self.store.own_series(study_uid))
        except Exception as exc:  # the PACS being down must not stop assembly: the quiet timer still works
            log.warning("PACS count query failed for study %s: %s", uid_digest(study_uid), exc)
            expected = None
        if expected == 0:
            expected = None  # the PACS holds only our own results: it does not know the study's images
        # Only a count the PACS knows is kept; None is re-asked after recheck_seconds.
        self.store.set_expected_count(study_uid, expected, now)
        return expected

    def complete(self, study_uid: str, reason: str, now: float | None = None, reprocess: str | None = None) -> bool:
        routes = self.settings.routes
        seen: list[tuple[int, list[str]]] = []

        def plan(instances: list[dict[str, Any]]) -> list[JobPlan]:
            # Called inside the store's completion transaction: an instance indexed meanwhile waits for it, and
            # is either in these plans or re-opens the study afterwards; it is never left out of a run.
            names = pipelines_for(instances, routes)
            seen.append((len(instances), names))
            return [
                JobPlan(
                    pipeline=name, version=self.version_of(name),
                    inputs=tuple(str(r["sop_instance_uid"]) for r in instances_for(name, instances, routes)),
                    force=reprocess in ("*", name),
                )
                for name in names
            ]

        done = self.store.complete_study(study_uid, reason, plan, now)
        if done:
            count, names = seen[-1]
            log.info("study %s complete (%s): %d instance(s), pipelines: %s",
                     uid_digest(study_uid), reason, count, ", ".join(names) or "none")
        return done
