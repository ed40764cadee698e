"""DeLong's paired test checked against independent computations: the textbook structural components with O(m n)
loops, a known case, large paired bootstraps (lesion-level and patient-level), and its type I error under the null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_auc_score

from pipelines.evaluation.delong import auc_covariance, delong_macro_test, delong_test


def _naive_delong(positive: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """DeLong et al. (1988) as written: psi(X, Y) = 1, 1/2, 0; V10, V01 by loops; S10, S01 with m-1, n-1."""
    xs = [(a[i], b[i]) for i in range(a.size) if positive[i]]
    ys = [(a[j], b[j]) for j in range(a.size) if not positive[j]]
    m, n = len(xs), len(ys)

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = np.array([[sum(psi(x[r], y[r]) for y in ys) / n for r in range(2)] for x in xs])
    v01 = np.array([[sum(psi(x[r], y[r]) for x in xs) / m for r in range(2)] for y in ys])
    auc = v10.mean(axis=0)
    s10 = sum(np.outer(v - auc, v - auc) for v in v10) / (m - 1)
    s01 = sum(np.outer(v - auc, v - auc) for v in v01) / (n - 1)
    s = s10 / m + s01 / n
    variance = s[0, 0] + s[1, 1] - 2 * s[0, 1]
    z = (auc[0] - auc[1]) / np.sqrt(variance)
    return float(auc[0]), float(auc[1]), float(variance), float(2 * norm.sf(abs(z)))


def test_fast_delong_equals_the_textbook_definition_including_ties() -> None:
    rng = np.random.default_rng(7)
    positive = rng.random(60) < 0.4
    # Rounding makes many ties, within and across classes: the mid-rank shortcut must count them as 1/2.
    a = np.round(positive + rng.normal(size=60), 1)
    b = np.round(0.6 * positive + 0.5 * a + rng.normal(size=60), 1)
    auc_a, auc_b, variance, p = _naive_delong(positive, a, b)
    test = delong_test(positive, a, b)
    assert test.auc_a == pytest.approx(auc_a, abs=1e-12)
    assert test.auc_b == pytest.approx(auc_b, abs=1e-12)
    assert test.auc_a == pytest.approx(roc_auc_score(positive, a), abs=1e-12)
    assert test.se**2 == pytest.approx(variance, rel=1e-10)
    assert test.p_value == pytest.approx(p, rel=1e-9)


def test_identical_scores_give_no_difference_and_p_one() -> None:
    rng = np.random.default_rng(1)
    positive = rng.random(50) < 0.5
    scores = positive + rng.normal(size=50)
    test = delong_test(positive, scores, scores.copy())
    assert (test.difference, test.z, test.p_value) == (0.0, 0.0, 1.0)
    per_class, macro = delong_macro_test(rng.integers(0, 3, 50), np.tile(scores[:, None], 3), np.tile(scores[:, None], 3))
    assert macro.p_value == 1.0 and all(t.p_value == 1.0 for t in per_class)


def test_singleton_clusters_are_plain_delong() -> None:
    rng = np.random.default_rng(2)
    positive = rng.random(80) < 0.3
    scores = np.column_stack([positive + rng.normal(size=80), rng.normal(size=80)])
    auc, cov = auc_covariance(positive, scores)
    auc_c, cov_c = auc_covariance(positive, scores, [f"p{i}" for i in range(80)])
    np.testing.assert_allclose(auc, auc_c)
    np.testing.assert_allclose(cov, cov_c)


def _correlated_scores(rng: np.random.Generator, positive: np.ndarray, patient_effect: np.ndarray) -> np.ndarray:
    shared = rng.normal(size=positive.size)
    a = 1.0 * positive + patient_effect + shared + 0.7 * rng.normal(size=positive.size)
    b = 0.7 * positive + patient_effect + shared + 0.7 * rng.normal(size=positive.size)
    return np.column_stack([a, b])


def _rank_sum_auc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each column of ``scores`` by the Mann-Whitney rank-sum identity (independent of the code under test;
    scikit-learn gives the same numbers but is too slow for thousands of resamples in a unit test)."""
    m = positive.sum()
    n = positive.size - m
    return (rankdata(scores, axis=0)[positive].sum(axis=0) - m * (m + 1) / 2) / (m * n)


def _bootstrap_variance_of_difference(positive: np.ndarray, scores: np.ndarray, groups: list[np.ndarray],
                                      n_resamples: int, rng: np.random.Generator) -> float:
    """Paired bootstrap of AUC(a) - AUC(b) resampling whole groups (lesions or patients) with replacement."""
    assert _rank_sum_auc(positive, scores)[0] == pytest.approx(roc_auc_score(positive, scores[:, 0]))
    differences = []
    for _ in range(n_resamples):
        rows = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        if positive[rows].all() or not positive[rows].any():
            continue
        auc = _rank_sum_auc(positive[rows], scores[rows])
        differences.append(auc[0] - auc[1])
    return float(np.var(differences, ddof=1))


def test_variance_matches_a_large_paired_bootstrap_of_lesions() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random(300) < 0.35
    scores = _correlated_scores(rng, positive, np.zeros(300))
    test = delong_test(positive, scores[:, 0], scores[:, 1])
    boot = _bootstrap_variance_of_difference(positive, scores, [np.array([i]) for i in range(300)], 4000, rng)
    assert test.se**2 == pytest.approx(boot, rel=0.12)


def test_patient_clusters_match_a_patient_bootstrap_where_lesion_delong_does_not() -> None:
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 6, 120)  # 1-5 lesions per patient, with a shared patient effect in both models' scores
    patient = np.repeat(np.arange(120), sizes)
    positive = np.repeat(rng.random(120) < 0.4, sizes) ^ (rng.random(patient.size) < 0.15)
    scores = _correlated_scores(rng, positive, np.repeat(rng.normal(scale=1.5, size=120), sizes))
    clustered = delong_test(positive, scores[:, 0], scores[:, 1], clusters=patient)
    naive = delong_test(positive, scores[:, 0], scores[:, 1])
    groups = [np.flatnonzero(patient == p) for p in range(120)]
    boot = _bootstrap_variance_of_difference(positive, scores, groups, 4000, rng)
    assert clustered.se**2 == pytest.approx(boot, rel=0.15)
    assert abs(np.log(clustered.se**2 / boot)) < abs(np.log(naive.se**2 / boot))


def test_macro_variance_matches_a_paired_bootstrap_and_per_class_is_one_vs_rest_delong() -> None:
    rng = np.random.default_rng(5)
    n = 300
    labels = rng.integers(0, 3, n)
    latent = np.eye(3)[labels] * 1.2 + rng.normal(size=(n, 3))
    a = np.exp(latent + 0.5 * rng.normal(size=(n, 3)))
    b = np.exp(latent + 1.0 * rng.normal(size=(n, 3)))
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    per_class, macro = delong_macro_test(labels, a, b)
    for c, test in enumerate(per_class):
        single = delong_test(labels == c, a[:, c], b[:, c])
        assert (test.difference, test.se, test.p_value) == pytest.approx((single.difference, single.se, single.p_value))
    differences = []
    for _ in range(4000):
        rows = rng.integers(0, n, n)
        ranks = rankdata(np.hstack([a[rows], b[rows]]), axis=0)  # columns: a's classes, then b's
        onehot = np.eye(3)[labels[rows]]
        m = onehot.sum(axis=0)
        auc = ((ranks * np.hstack([onehot, onehot])).sum(axis=0) - np.tile(m * (m + 1) / 2, 2)) / np.tile(m * (n - m), 2)
        differences.append(auc[:3].mean() - auc[3:].mean())
    assert macro.difference == pytest.approx(roc_auc_score(labels, a, multi_class="ovr")
                                             - roc_auc_score(labels, b, multi_class="ovr"), abs=1e-12)
    assert macro.se**2 == pytest.approx(np.var(differences, ddof=1), rel=0.12)


def test_macro_of_two_classes_is_the_binary_test() -> None:
    # With two classes both one-vs-rest AUCs are the same AUC, so the macro's variance (which rests on the
    # cross-class covariance) must equal the single binary variance.
    rng = np.random.default_rng(6)
    labels = (rng.random(90) < 0.4).astype(int)
    pa = 1 / (1 + np.exp(-(labels + rng.normal(size=90))))
    pb = 1 / (1 + np.exp(-(0.5 * labels + rng.normal(size=90))))
    _, macro = delong_macro_test(labels, np.column_stack([1 - pa, pa]), np.column_stack([1 - pb, pb]))
    binary = delong_test(labels == 1, pa, pb)
    assert (macro.difference, macro.se, macro.p_value) == pytest.approx((binary.difference, binary.se, binary.p_value))


def test_type_one_error_is_nominal_under_the_null() -> None:
    rng = np.random.default_rng(8)
    rejections = 0
    trials = 1000
    for _ in range(trials):
        positive = rng.random(100) < 0.4
        shared = rng.normal(size=100)  # two different models with the same AUC, correlated through shared noise
        a = positive + shared + rng.normal(size=100)
        b = positive + shared + rng.normal(size=100)
        rejections += delong_test(positive, a, b).p_value < 0.05
    assert 0.03 <= rejections / trials <= 0.075


def test_rejects_too_few_lesions_and_mismatched_clusters() -> None:
    with pytest.raises(ValueError, match="at least 2 positive"):
        delong_test(np.array([True, False, False]), np.arange(3.0), np.arange(3.0))
    with pytest.raises(ValueError, match='"clusters"'):
        delong_test(np.array([True, True, False, False]), np.arange(4.0), np.arange(4.0), clusters=["a"])
