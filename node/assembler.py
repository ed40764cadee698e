"""Study assembly: decides when a receiving study is complete and queues one job per routed pipeline.

Complete = the instance count reached the PACS's NumberOfStudyRelatedInstances (C-FIND, where [pacs] is set),
or ``quiet_seconds`` passed without a new instance, or a manual ``dicom-ai-node process`` trigger.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from node.config import Settings
from node.listener import uid_digest
from node.router import pipelines_for
from node.store import Store

log = logging.getLogger(__name__)

CountQuery = Callable[[str], int | None]


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
            reason = self._ready(study, now)
            if reason is not None and self.complete(study["study_uid"], reason, now):
                completed.append(study["study_uid"])
        return completed

    def _ready(self, study: dict[str, object], now: float) -> str | None:
        uid = str(study["study_uid"])
        count = int(study["instance_count"] or 0)  # type: ignore[call-overload]
        expected = study["expected_count"]
        if expected is None and self.count_in_pacs is not None:
            checked = study["expected_checked_at"]
            if checked is None or now - float(checked) >= self.recheck_seconds:  # type: ignore[arg-type]
                expected = self._query(uid, now)
        if expected is not None and count >= int(expected):  # type: ignore[call-overload]
            return f"instance count {count} reached the expected {expected}"
        if now - float(study["last_received_at"]) >= self.settings.assembly.quiet_seconds:  # type: ignore[arg-type]
            return f"no new instance for {self.settings.assembly.quiet_seconds:g} s"
        return None

    def _query(self, study_uid: str, now: float) -> int | None:
        assert self.count_in_pacs is not None
        try:
            expected = self.count_in_pacs(study_uid)
        except Exception as exc:  # the PACS being down must not stop assembly: the quiet timer still works
            log.warning("PACS count query failed for study %s: %s", uid_digest(study_uid), exc)
            expected = None
        # Only a count the PACS knows is kept; None is re-asked after recheck_seconds.
        self.store.set_expected_count(study_uid, expected, now)
        return expected

    def complete(self, study_uid: str, reason: str, now: float | None = None) -> bool:
        instances = self.store.study_instances(study_uid)
        pipelines = pipelines_for(instances, self.settings.routes)
        jobs = [(name, self.version_of(name)) for name in pipelines]
        done = self.store.complete_study(study_uid, reason, jobs, now)
        if done:
            log.info(
                "study %s complete (%s): %d instance(s), pipelines: %s",
                uid_digest(study_uid), reason, len(instances), ", ".join(pipelines) or "none (no rule matched)",
            )
        return done
