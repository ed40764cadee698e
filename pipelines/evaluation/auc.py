"""ROC AUC for many bootstrap resamples at once, as a weighted Mann-Whitney statistic over one sort.

AUC = P(score of a positive > score of a negative) + 0.5 P(tie) (Hanley & McNeil 1982), which is the area under
the empirical ROC curve by the trapezoidal rule. A bootstrap resample only re-weights the lesions (each by its
patient's count), so the scores are sorted once and each resample's AUC is a cumulative sum over tie groups:
O(n) per resample instead of O(n log n), for all resamples in one array operation. Equal to scikit-learn's
``roc_auc_score(..., sample_weight=w)`` (checked in the tests); scikit-learn computes the point estimates.
"""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_auc"]


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of ``scores`` for the ``positive`` mask under each row of ``weights`` (n_resamples, n); NaN where a
    resample has no positive or no negative weight (the AUC is undefined there)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w_sorted = weights[:, order]
    pos_sorted = positive[order]
    pos_per_tie = np.add.reduceat(w_sorted * pos_sorted, starts, axis=1)
    neg_per_tie = np.add.reduceat(w_sorted * ~pos_sorted, starts, axis=1)
    neg_below = np.cumsum(neg_per_tie, axis=1) - neg_per_tie
    wins = np.sum(pos_per_tie * (neg_below + 0.5 * neg_per_tie), axis=1)
    pairs = pos_per_tie.sum(axis=1) * neg_per_tie.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)
