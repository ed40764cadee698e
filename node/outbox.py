"""Delivery of result objects to the PACS from the persistent outbox, with exponential backoff.

An item leaves "pending" only on a stored status from the PACS, or after ``max_attempts`` (dead letter,
listed by ``dicom-ai-node status``); a kill at any point leaves it pending, and a resend is harmless. Each attempt
has a wall-clock budget (``budgets.delivery_seconds``), handed to the sender; past it the attempt counts as failed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from node.audit import RESULT_SENT
from node.config import OutboxSettings, PacsSettings
from node.pacs import PacsError, SendOutcome, store_files
from node.store import Store

log = logging.getLogger(__name__)

# (PACS, calling AE title, files, budget of the attempt in seconds) -> one outcome per file
Sender = Callable[[PacsSettings, str, list[Path], float], list[SendOutcome]]


def backoff(settings: OutboxSettings, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failure: backoff_seconds * 2^(attempts-1), capped."""
    return float(min(settings.backoff_max_seconds, settings.backoff_seconds * 2 ** max(0, attempts - 1)))


class Outbox:
    def __init__(
        self,
        store: Store,
        pacs: PacsSettings | None,
        settings: OutboxSettings,
        calling_ae: str,
        sender: Sender = store_files,
        attempt_budget_seconds: float = 120.0,
    ) -> None:
        self.store = store
        self.pacs = pacs
        self.settings = settings
        self.calling_ae = calling_ae
        self.sender = sender
        self.attempt_budget_seconds = attempt_budget_seconds

    def run_once(self, now: float | None = None) -> int:
        """Send every due item over one association; returns how many were attempted."""
        if self.pacs is None:
            return 0
        due = self.store.due_outbox(now)
        if not due:
            return 0
        by_path = {Path(item["path"]): item for item in due}
        try:
            outcomes = self.sender(self.pacs, self.calling_ae, list(by_path), self.attempt_budget_seconds)
        except (PacsError, OSError) as exc:
            outcomes = [SendOutcome(path, False, str(exc)) for path in by_path]
        for outcome in outcomes:
            item = by_path[outcome.path]
            if outcome.ok:
                self.store.outbox_sent(item["item_id"])
                self.store.audit(
                    RESULT_SENT, "sent", actor=self.pacs.ae_title, source=f"{self.pacs.host}:{self.pacs.port}",
                    study_uid=str(item["job_id"]).rsplit("/", 1)[0],
                    detail={"sop_instance_uid": item["sop_instance_uid"]},
                )
                continue
            attempts = int(item["attempts"]) + 1
            if attempts >= self.settings.max_attempts:
                log.error("result object dead-lettered after %d attempts: %s", attempts, outcome.detail)
                self.store.outbox_failed(item["item_id"], outcome.detail, None)
            else:
                delay = backoff(self.settings, attempts)
                log.warning("sending a result object failed (%s); retry in %.0f s", outcome.detail, delay)
                self.store.outbox_failed(item["item_id"], outcome.detail, time.time() + delay)
        sent = sum(o.ok for o in outcomes)
        if sent:
            log.info("sent %d result object(s) to %s", sent, self.pacs.ae_title)
        return len(outcomes)
