"""DeLong's test for two correlated ROC AUCs measured on the same lesions, per class and for the macro AUC.

* DeLong, DeLong & Clarke-Pearson (1988): each AUC is a two-sample U-statistic; its variance and the covariance
  between two AUCs on the same cases are estimated from the structural components V10 (per positive: the fraction
  of negatives it outranks, ties 1/2) and V01 (per negative: the fraction of positives that outrank it):
  S = S10 / m + S01 / n.
* Sun & Xu (2014) compute V10 and V01 from mid-ranks (one sort per model) instead of the O(m n) comparisons.
* Lesions of one patient are correlated. With ``clusters`` (patient ids) the components are summed per patient
  before their covariance is taken, as in Obuchowski (1997), so that a patient, not a lesion, is the independent
  unit; with one lesion per patient this is exactly DeLong's estimator. (Small-sample factor: each component is
  scaled by sqrt(I/(I-1)), I = patients with a positive resp. negative lesion; Obuchowski's cross term uses
  I11/(I11-1) instead, a difference of order 1/I.)
* Macro AUC (mean of the one-vs-rest AUCs): every class's one-vs-rest AUC is written as its mean plus a sum of
  per-lesion influence terms, psi = (V10 - AUC)/m for the class's lesions and (V01 - AUC)/n for the others; the
  covariance of all 2K AUCs (K classes x two models) is the Gram matrix of these terms summed per patient,
  Var(macro difference) = c' S c with c = (+1/K ... , -1/K ...). Restricted to one class it is DeLong's S above.
  The tests check it against a large paired bootstrap.
The test statistic is z = difference / SE, two-sided p from the normal distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

__all__ = ["DeLongTest", "auc_covariance", "delong_macro_test", "delong_test"]


@dataclass(frozen=True)
class DeLongTest:
    """AUC of model a and b on the same lesions, their difference (a - b), its DeLong SE, z, p and normal CI."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_lesions: int
    n_clusters: int
    confidence: float = 0.95


def _cluster_index(n: int, clusters: Sequence[str] | np.ndarray | None) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    if len(clusters) != n:
        raise ValueError(f'Argument "clusters" must have one entry per lesion ({n}), got {len(clusters)}.')
    return np.unique(np.asarray(clusters), return_inverse=True)[1].reshape(-1)


def _influence(positive: np.ndarray, scores: np.ndarray, cluster: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC per column of ``scores`` (n, M) and the per-lesion influence terms (n, M), scaled as the docstring says."""
    m = int(positive.sum())
    n_neg = positive.size - m
    if m < 2 or n_neg < 2:
        raise ValueError(f"DeLong's variance needs at least 2 positive and 2 negative lesions, got {m} and {n_neg}.")
    combined = rankdata(scores, axis=0)  # mid-ranks: ties count 1/2, as in the AUC
    within_pos = rankdata(scores[positive], axis=0)
    within_neg = rankdata(scores[~positive], axis=0)
    auc = (combined[positive].sum(axis=0) - m * (m + 1) / 2.0) / (m * n_neg)
    v10 = (combined[positive] - within_pos) / n_neg
    v01 = 1.0 - (combined[~positive] - within_neg) / m
    i10 = np.unique(cluster[positive]).size
    i01 = np.unique(cluster[~positive]).size
    if i10 < 2 or i01 < 2:
        raise ValueError("DeLong's variance needs positive and negative lesions from at least 2 patients each.")
    psi = np.empty_like(scores, dtype=np.float64)
    psi[positive] = (v10 - auc) / m * np.sqrt(i10 / (i10 - 1))
    psi[~positive] = (v01 - auc) / n_neg * np.sqrt(i01 / (i01 - 1))
    return auc, psi


def auc_covariance(
    positive: np.ndarray, scores: np.ndarray, clusters: Sequence[str] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of the columns of ``scores`` (n, M) for the ``positive`` mask, and DeLong's (M, M) covariance."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(positive.size, -1)
    cluster = _cluster_index(positive.size, clusters)
    auc, psi = _influence(positive, scores, cluster)
    per_cluster = np.zeros((int(cluster.max()) + 1, scores.shape[1]))
    np.add.at(per_cluster, cluster, psi)
    return auc, per_cluster.T @ per_cluster


def _test(auc_a: float, auc_b: float, variance: float, n: int, n_clusters: int, confidence: float) -> DeLongTest:
    difference = auc_a - auc_b
    se = float(np.sqrt(max(variance, 0.0)))
    if se > 0:
        z = difference / se
    else:  # identical rankings: no difference and no variance; any difference with zero variance is certain
        z = 0.0 if difference == 0 else float(np.copysign(np.inf, difference))
    half = float(norm.ppf(0.5 + confidence / 2)) * se
    return DeLongTest(
        auc_a=float(auc_a),
        auc_b=float(auc_b),
        difference=float(difference),
        se=se,
        z=float(z),
        p_value=float(2 * norm.sf(abs(z))),
        ci_low=float(difference - half),
        ci_high=float(difference + half),
        n_lesions=n,
        n_clusters=n_clusters,
        confidence=confidence,
    )


def delong_test(
    positive: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    clusters: Sequence[str] | np.ndarray | None = None,
    confidence: float = 0.95,
) -> DeLongTest:
    """Paired DeLong test of AUC(scores_a) - AUC(scores_b) on the same lesions (binary truth ``positive``)."""
    positive = np.asarray(positive, dtype=bool)
    auc, cov = auc_covariance(positive, np.column_stack([scores_a, scores_b]), clusters)
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    n_clusters = int(_cluster_index(positive.size, clusters).max()) + 1
    return _test(auc[0], auc[1], variance, positive.size, n_clusters, confidence)


def delong_macro_test(
    labels: np.ndarray,
    probabilities_a: np.ndarray,
    probabilities_b: np.ndarray,
    clusters: Sequence[str] | np.ndarray | None = None,
    confidence: float = 0.95,
) -> tuple[tuple[DeLongTest, ...], DeLongTest]:
    """One-vs-rest DeLong test per class (column of the (n, K) probabilities) and for the macro AUC difference."""
    labels = np.asarray(labels)
    probabilities_a = np.asarray(probabilities_a, dtype=np.float64)
    probabilities_b = np.asarray(probabilities_b, dtype=np.float64)
    n, k = probabilities_a.shape
    if probabilities_b.shape != (n, k) or labels.shape != (n,):
        raise ValueError("labels (n,) and both probability arrays (n, K) must describe the same lesions.")
    cluster = _cluster_index(n, clusters)
    n_clusters = int(cluster.max()) + 1
    aucs = np.empty(2 * k)
    psi = np.empty((n, 2 * k))
    for c in range(k):
        aucs[2 * c : 2 * c + 2], psi[:, 2 * c : 2 * c + 2] = _influence(
            labels == c, np.column_stack([probabilities_a[:, c], probabilities_b[:, c]]), cluster
        )
    per_cluster = np.zeros((n_clusters, 2 * k))
    np.add.at(per_cluster, cluster, psi)
    cov = per_cluster.T @ per_cluster
    per_class = tuple(
        _test(aucs[2 * c], aucs[2 * c + 1], cov[2 * c, 2 * c] + cov[2 * c + 1, 2 * c + 1] - 2 * cov[2 * c, 2 * c + 1],
              n, n_clusters, confidence)
        for c in range(k)
    )
    contrast = np.tile([1.0 / k, -1.0 / k], k)
    macro = _test(float(aucs[0::2].mean()), float(aucs[1::2].mean()), float(contrast @ cov @ contrast), n,
                  n_clusters, confidence)
    return per_class, macro
