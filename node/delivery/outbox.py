"""The persistent outbox: one queue per destination, exponential backoff, a dead letter after N attempts.

An item leaves "pending" only on a stored status from its destination, or dead-lettered: after the destination's
``max_attempts``, or at once when the destination cannot take that object at all (``SendOutcome.permanent``).
Dead items are listed by ``dicom-ai-node outbox list`` and re-queued by ``outbox retry``. A kill at any point
leaves an item pending, and a resend is harmless (result UIDs are deterministic). Each attempt has a wall-clock
budget (``budgets.delivery_seconds``), handed to the destination.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from node.audit import RESULT_SENT
from node.config import OutboxSettings
from node.delivery import DeliveryError, Destination, SendOutcome
from node.store import Store

log = logging.getLogger(__name__)


def backoff(settings: OutboxSettings, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failure: backoff_seconds * 2^(attempts-1), capped."""
    return float(min(settings.backoff_max_seconds, settings.backoff_seconds * 2 ** max(0, attempts - 1)))


class Outbox:
    """Delivers one destination's due items; the service runs one per destination, each in its own thread, so a
    destination that is down or slow never holds up the others."""

    def __init__(self, store: Store, destination: Destination, attempt_budget_seconds: float = 120.0) -> None:
        self.store = store
        self.destination = destination
        self.settings = destination.settings
        self.attempt_budget_seconds = attempt_budget_seconds

    def run_once(self, now: float | None = None) -> int:
        """Send every due item over one association (or request); returns how many were attempted."""
        due = self.store.due_outbox(now, destination=self.settings.name)
        if not due:
            return 0
        by_path = {Path(item["path"]): item for item in due}
        try:
            outcomes = self.destination.send(list(by_path), self.attempt_budget_seconds)
        except (DeliveryError, OSError) as exc:
            outcomes = [SendOutcome(path, False, str(exc)) for path in by_path]
        retry = self.settings.retry
        for outcome in outcomes:
            item = by_path[outcome.path]
            if outcome.ok:
                self.store.outbox_sent(item["item_id"])
                self.store.audit(
                    RESULT_SENT, "sent", actor=self.settings.name, source=self.settings.describe(),
                    study_uid=str(item["job_id"]).rsplit("/", 1)[0],
                    detail={"sop_instance_uid": item["sop_instance_uid"], "destination": self.settings.name},
                )
                continue
            attempts = int(item["attempts"]) + 1
            if outcome.permanent or attempts >= retry.max_attempts:
                why = "cannot be delivered" if outcome.permanent else f"failed {attempts} times"
                log.error("destination %s: result object dead-lettered (%s): %s", self.settings.name, why,
                          outcome.detail)
                self.store.outbox_failed(item["item_id"], outcome.detail, None)
            else:
                delay = backoff(retry, attempts)
                log.warning("destination %s: sending a result object failed (%s); retry in %.0f s",
                            self.settings.name, outcome.detail, delay)
                self.store.outbox_failed(item["item_id"], outcome.detail, time.time() + delay)
        sent = sum(o.ok for o in outcomes)
        if sent:
            log.info("sent %d result object(s) to %s", sent, self.settings.name)
        return len(outcomes)
