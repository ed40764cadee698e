"""What readers say about the AI's results: acknowledge a study's result, confirm a finding, or dismiss it as a
false positive; and the rates that feedback gives each pipeline version, each with its 95% Wilson interval.

The rows live in the store (``Store.record_feedback`` writes them with their audit record in one transaction); this
module holds their types and the statistics, and imports nothing of the node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Sequence

AUDIT_KIND = "ai-feedback"  # the audit table's kind for feedback (node.audit.FEEDBACK)
REASON_MAX_CHARS = 500  # a sentence or two; the free text is no place for a report


class Verdict(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # the study's AI result was seen (study-level: no finding)
    CONFIRMED = "confirmed"  # the finding is real
    DISMISSED = "dismissed"  # the finding is a false positive


FINDING_VERDICTS = (Verdict.CONFIRMED, Verdict.DISMISSED)


class FeedbackError(ValueError):
    """Feedback the node cannot record (unknown verdict, a finding not of the study, a reason too long); the message
    names the fix."""


def parse_verdict(verdict: str, for_finding: bool) -> Verdict:
    try:
        parsed = Verdict(verdict)
    except ValueError:
        raise FeedbackError(f"unknown verdict {verdict!r}: use one of {', '.join(v.value for v in Verdict)}") from None
    if for_finding and parsed not in FINDING_VERDICTS:
        raise FeedbackError(f"a finding is {' or '.join(FINDING_VERDICTS)}; {parsed} is for the whole study "
                            "(send no finding_id)")
    if not for_finding and parsed in FINDING_VERDICTS:
        raise FeedbackError(f"{parsed} is about a finding: send its finding_id")
    return parsed


def checked_reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) > REASON_MAX_CHARS:
        raise FeedbackError(f"the reason has {len(reason)} characters: shorten it to {REASON_MAX_CHARS} at most")
    return reason


@dataclass(frozen=True)
class FeedbackRecord:
    """One verdict as recorded; ``tracking_uid`` is None for study-level feedback (an acknowledgement)."""

    feedback_id: int
    study_uid: str
    run_id: str | None
    tracking_uid: str | None
    tracking_id: str | None
    pipeline: str | None
    pipeline_version: str | None
    verdict: Verdict
    reason: str
    username: str
    ts: float

    @property
    def finding_id(self) -> str | None:
        """The key of the finding in the store's ``findings`` table (``run_id/tracking_uid``)."""
        return f"{self.run_id}/{self.tracking_uid}" if self.run_id and self.tracking_uid else None


@dataclass(frozen=True)
class Proportion:
    """k of n, with its 95% Wilson score interval."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n


def proportion(k: int, n: int) -> Proportion:
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n and n > 0 (k={k}, n={n})")
    from scipy.stats import binomtest  # scipy only where a rate is asked for: the listener starts without it

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return Proportion(k, n, float(ci.low), float(ci.high))


@dataclass(frozen=True)
class FeedbackRate:
    """A pipeline version's findings as readers judged them. Each finding counts once, with its latest verdict
    (each reader's latest counts; where readers disagree, the latest of theirs, and ``disputed`` counts it)."""

    pipeline: str
    pipeline_version: str
    reviewed: int  # findings with a confirm or dismiss verdict
    confirmed: int
    dismissed: int
    disputed: int  # findings whose readers' current verdicts disagree

    @property
    def false_positive_rate(self) -> Proportion:
        """dismissed / (confirmed + dismissed)"""
        return proportion(self.dismissed, self.confirmed + self.dismissed)

    @property
    def confirmation_rate(self) -> Proportion:
        """confirmed / (confirmed + dismissed)"""
        return proportion(self.confirmed, self.confirmed + self.dismissed)


def rates(verdicts: Sequence[tuple[str, str, str, str, str]]) -> list[FeedbackRate]:
    """Per pipeline version, from every confirm or dismiss verdict recorded, oldest first:
    (pipeline, pipeline_version, finding_id, username, verdict)."""
    current: dict[tuple[str, str, str], dict[str, Verdict]] = {}
    for pipeline, version, finding_id, username, verdict in verdicts:
        by_user = current.setdefault((pipeline, version, finding_id), {})
        by_user.pop(username, None)  # re-inserted last: dict order is the order of the readers' latest verdicts
        by_user[username] = Verdict(verdict)
    counts: dict[tuple[str, str], list[int]] = {}
    for (pipeline, version, _), by_user in current.items():
        latest = list(by_user.values())[-1]
        c = counts.setdefault((pipeline, version), [0, 0, 0])
        c[0 if latest == Verdict.CONFIRMED else 1] += 1
        c[2] += len(set(by_user.values())) > 1
    return [FeedbackRate(pipeline, version, confirmed + dismissed, confirmed, dismissed, disputed)
            for (pipeline, version), (confirmed, dismissed, disputed) in sorted(counts.items())]
