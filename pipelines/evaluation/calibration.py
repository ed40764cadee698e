"""Top-label calibration: expected calibration error (ECE) and the reliability diagram's bins.

ECE = sum over equal-width confidence bins of (bin weight / total weight) * |accuracy in bin - mean confidence
in bin|, where confidence is the largest class probability and accuracy whether its class is the true one
(Naeini et al. 2015; Guo et al. 2017, eq. 3). Bins follow torchmetrics' ``MulticlassCalibrationError``
(``norm="l1"``): bin i holds edges[i] <= confidence < edges[i+1], and confidence 1.0 falls in the last bin. A lesion's
bin does not change between bootstrap resamples, so each resample's ECE is a weighted sum over a fixed
(lesion x bin) indicator: one matrix product for all resamples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Reliability", "calibration_bins", "expected_calibration_error", "reliability"]


@dataclass(frozen=True)
class Reliability:
    """Per-bin lesion count, mean confidence and accuracy; empty bins hold NaN for confidence and accuracy."""

    bin_edges: tuple[float, ...]
    count: tuple[int, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]


def calibration_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence in ``n_bins`` equal-width bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)


def _top_label(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    return confidence, correct


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15, weights: np.ndarray | None = None
) -> np.ndarray:
    """ECE of (n, n_classes) ``probabilities`` against integer ``labels``, one value per row of ``weights``
    (n_resamples, n); without weights, a single-element array for the data as given."""
    confidence, correct = _top_label(np.asarray(probabilities, dtype=np.float64), np.asarray(labels))
    weights = np.ones((1, confidence.size)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))
    in_bin = np.zeros((confidence.size, n_bins))
    in_bin[np.arange(confidence.size), calibration_bins(confidence, n_bins)] = 1.0
    mass = weights @ in_bin
    gap = np.abs((weights * correct) @ in_bin - (weights * confidence) @ in_bin)  # = mass * |acc - conf| per bin
    total = mass.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, gap.sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def reliability(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> Reliability:
    """The reliability diagram's content for the data as given."""
    confidence, correct = _top_label(np.asarray(probabilities, dtype=np.float64), np.asarray(labels))
    bins = calibration_bins(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return Reliability(
        bin_edges=tuple(float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)),
        count=tuple(int(c) for c in count),
        confidence=tuple(float(c) for c in mean_conf),
        accuracy=tuple(float(a) for a in accuracy),
    )
