"""Patient-level bootstrap: resampling weights and percentile confidence intervals.

A patient can have several lesions and several images, so lesions are not independent: resampling lesions would
understate the variance. Every figure is therefore re-computed on resamples of *patients* (Efron & Tibshirani 1993,
ch. 13; the cluster bootstrap of Field & Welsh 2007): a resample is a vector of patient counts drawn from
Multinomial(P, 1/P), and a lesion or image carries its patient's count as its weight. All figures of one evaluation
share the same resamples, so differences between prediction sets are paired. The interval is the percentile
interval. A resample on which a figure is undefined (e.g. a class absent, so its AUC is undefined) is skipped for
that figure and counted; the count is reported beside the interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate", "PatientResamples", "estimate", "patient_resamples"]


@dataclass(frozen=True)
class Estimate:
    """A figure with its percentile bootstrap interval; ``n`` counts the units it is computed over (lesions)."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    n_patients: int
    n_resamples: int
    n_skipped: int
    confidence: float = 0.95

    def text(self, digits: int = 3) -> str:
        """``0.912 (95% CI 0.871 to 0.945)``: the one wording the tables and plot legends share ("to", not a dash,
        because differences can be negative)."""
        def fmt(x: float) -> str:
            return f"{x:.{digits}f}" if np.isfinite(x) else "undefined"

        return f"{fmt(self.value)} ({100 * self.confidence:g}% CI {fmt(self.ci_low)} to {fmt(self.ci_high)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "value": _finite_or_none(self.value),
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
            "n": self.n,
            "n_patients": self.n_patients,
            "n_resamples": self.n_resamples,
            "n_skipped": self.n_skipped,
            "confidence": self.confidence,
            "ci_method": "percentile, patient-level bootstrap",
        }


def _finite_or_none(x: float) -> float | None:
    # JSON has no NaN; an undefined figure is null rather than a string or a fake number.
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class PatientResamples:
    """Bootstrap patient counts, ``counts[b, p]`` = how often patient ``patient_ids[p]`` is in resample ``b``."""

    patient_ids: tuple[str, ...]
    counts: np.ndarray  # (n_resamples, n_patients), float64 so that it can weight sums directly

    @property
    def n_resamples(self) -> int:
        return int(self.counts.shape[0])

    def index_of(self, patient_ids: Sequence[str]) -> np.ndarray:
        """Column of each given patient id in ``counts``."""
        position = {pid: i for i, pid in enumerate(self.patient_ids)}
        missing = sorted({pid for pid in patient_ids if pid not in position})
        if missing:
            raise ValueError(f"Patients {missing[:5]} are not among the resampled patients.")
        return np.fromiter((position[pid] for pid in patient_ids), dtype=np.intp, count=len(patient_ids))

    def weights(self, patient_ids: Sequence[str]) -> np.ndarray:
        """(n_resamples, len(patient_ids)) weights: each unit weighs its patient's count."""
        return self.counts[:, self.index_of(patient_ids)]


def patient_resamples(patient_ids: Sequence[str], n_resamples: int, rng: np.random.Generator) -> PatientResamples:
    """Draw ``n_resamples`` bootstrap resamples of the distinct patients in ``patient_ids`` (order kept)."""
    if n_resamples < 1:
        raise ValueError(f'Argument "n_resamples" must be at least 1, got {n_resamples}.')
    distinct = tuple(dict.fromkeys(patient_ids))
    if not distinct:
        raise ValueError('Argument "patient_ids" must name at least one patient.')
    n = len(distinct)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    return PatientResamples(patient_ids=distinct, counts=counts)


def estimate(value: float, replicates: np.ndarray, n: int, n_patients: int, confidence: float = 0.95) -> Estimate:
    """The point ``value`` with the percentile interval of the finite ``replicates``; NaN replicates are skipped."""
    replicates = np.asarray(replicates, dtype=np.float64)
    defined = replicates[np.isfinite(replicates)]
    alpha = 1.0 - confidence
    if defined.size:
        low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    else:
        low = high = float("nan")
    return Estimate(
        value=float(value),
        ci_low=float(low),
        ci_high=float(high),
        n=int(n),
        n_patients=int(n_patients),
        n_resamples=int(replicates.size),
        n_skipped=int(replicates.size - defined.size),
        confidence=confidence,
    )
