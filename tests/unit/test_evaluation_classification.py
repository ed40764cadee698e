"""Classification figures: the vectorised bootstrap replicates equal scikit-learn with ``sample_weight``; ECE
equals a hand computation; undefined resamples are skipped and counted; the patient bootstrap resamples patients."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

from pipelines.evaluation.auc import weighted_auc
from pipelines.evaluation.bootstrap import estimate, patient_resamples
from pipelines.evaluation.calibration import expected_calibration_error, reliability
from pipelines.evaluation.classification import point_figures, replicate_figures


def _lesions(rng: np.random.Generator, n: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, k, n)
    logits = 1.5 * np.eye(k)[labels] + rng.normal(size=(n, k))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # Two decimals make ties in scores (as calibrated outputs often have); the last column keeps rows summing to 1.
    probabilities[:, :-1] = np.round(probabilities[:, :-1], 2)
    probabilities[:, -1] = 1.0 - probabilities[:, :-1].sum(axis=1)
    return labels, probabilities


def test_weighted_auc_equals_scikit_learn_with_sample_weight_including_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)
    positive = rng.random(200) < 0.3
    weights = rng.multinomial(200, np.full(200, 1 / 200), size=50).astype(float)
    got = weighted_auc(scores, positive, weights)
    expected = [roc_auc_score(positive, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_weighted_auc_is_undefined_without_positives() -> None:
    weights = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    got = weighted_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([False, False, True, True]), weights)
    assert np.isnan(got[0]) and got[1] == 1.0


def test_replicates_equal_scikit_learn_on_each_resample() -> None:
    rng = np.random.default_rng(1)
    labels, probabilities = _lesions(rng, 150)
    weights = rng.multinomial(150, np.full(150, 1 / 150), size=40).astype(float)
    reps = replicate_figures(labels, probabilities, weights, ece_bins=10)
    predicted = probabilities.argmax(axis=1)
    for b, w in enumerate(weights):
        assert reps["macro_auc"][b] == pytest.approx(
            roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", sample_weight=w), abs=1e-12)
        assert reps["accuracy"][b] == pytest.approx(accuracy_score(labels, predicted, sample_weight=w))
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, labels=[0, 1, 2], sample_weight=w, zero_division=0.0)
        for c in range(3):
            assert (reps[f"precision/{c}"][b], reps[f"recall/{c}"][b], reps[f"f1/{c}"][b]) == pytest.approx(
                (precision[c], recall[c], f1[c]))
        assert reps["macro_f1"][b] == pytest.approx(f1.mean())
        assert reps["ece"][b] == pytest.approx(expected_calibration_error(
            np.repeat(probabilities, w.astype(int), axis=0), np.repeat(labels, w.astype(int)), 10)[0])
    ones = replicate_figures(labels, probabilities, np.ones((1, 150)), ece_bins=10)
    point = point_figures(labels, probabilities, ece_bins=10)
    assert point.keys() == ones.keys()
    assert all(point[key] == pytest.approx(ones[key][0]) for key in point)


def test_ece_equals_a_hand_computation() -> None:
    # 5 bins of width 0.2. Top-label confidences 0.9, 0.85, 0.7, 0.45, 1.0 (bin 4 holds 0.9, 0.85 and 1.0).
    probabilities = np.array([
        [0.9, 0.05, 0.05],   # predicts 0, true 0: correct
        [0.05, 0.85, 0.1],   # predicts 1, true 2: wrong
        [0.2, 0.1, 0.7],     # predicts 2, true 2: correct   (bin 3)
        [0.45, 0.3, 0.25],   # predicts 0, true 1: wrong     (bin 2)
        [0.0, 1.0, 0.0],     # predicts 1, true 1: correct   (bin 4: confidence 1.0 goes to the last bin)
    ])
    labels = np.array([0, 2, 2, 1, 1])
    # bin 4: accuracy 2/3, confidence (0.9+0.85+1.0)/3; bin 3: |1 - 0.7|; bin 2: |0 - 0.45|
    by_hand = 3 / 5 * abs(2 / 3 - 2.75 / 3) + 1 / 5 * 0.3 + 1 / 5 * 0.45
    assert expected_calibration_error(probabilities, labels, n_bins=5)[0] == pytest.approx(by_hand)
    rel = reliability(probabilities, labels, n_bins=5)
    assert rel.count == (0, 0, 1, 1, 3)
    assert rel.accuracy[2:] == pytest.approx((0.0, 1.0, 2 / 3))
    assert rel.confidence[2:] == pytest.approx((0.45, 0.7, 2.75 / 3))


def test_patient_resamples_keep_a_patients_lesions_together_and_are_seeded() -> None:
    patients = ["a", "a", "b", "c", "c", "c"]
    first = patient_resamples(patients, 200, np.random.default_rng(3))
    again = patient_resamples(patients, 200, np.random.default_rng(3))
    np.testing.assert_array_equal(first.counts, again.counts)
    assert first.patient_ids == ("a", "b", "c")
    assert np.all(first.counts.sum(axis=1) == 3)
    weights = first.weights(patients)
    np.testing.assert_array_equal(weights[:, 0], weights[:, 1])
    np.testing.assert_array_equal(weights[:, 3], weights[:, 5])
    with pytest.raises(ValueError, match="not among"):
        first.weights(["z"])


def test_resamples_without_a_class_are_skipped_and_counted() -> None:
    rng = np.random.default_rng(4)
    labels, probabilities = _lesions(rng, 60)
    labels[labels == 2] = 0
    labels[:2] = 2  # class 2 only in patient p0's two lesions
    patients = ["p0", "p0", *(f"p{1 + i // 2}" for i in range(58))]
    resamples = patient_resamples(patients, 500, np.random.default_rng(5))
    reps = replicate_figures(labels, probabilities, resamples.weights(patients), ece_bins=10)
    without_p0 = int(np.sum(resamples.counts[:, 0] == 0))
    assert 100 < without_p0 < 300  # about (1 - 1/30)^30 = 36 % of resamples
    for key in ("auc/2", "macro_auc", "recall/2", "f1/2", "macro_f1", "macro_recall", "macro_precision"):
        e = estimate(0.5, reps[key], 60, 30)
        assert e.n_skipped == without_p0, key
        assert np.isfinite(e.ci_low) and np.isfinite(e.ci_high)
    for key in ("accuracy", "ece", "auc/0", "precision/2"):
        assert estimate(0.5, reps[key], 60, 30).n_skipped == 0, key


def test_estimate_is_the_percentile_interval_and_json_has_no_nan() -> None:
    replicates = np.r_[np.linspace(0, 1, 1001), np.nan]
    e = estimate(0.5, replicates, n=10, n_patients=5)
    assert (e.ci_low, e.ci_high, e.n_resamples, e.n_skipped) == pytest.approx((0.025, 0.975, 1002, 1))
    assert e.text() == "0.500 (95% CI 0.025 to 0.975)"
    undefined = estimate(float("nan"), np.full(3, np.nan), n=1, n_patients=1).to_json()
    assert undefined["value"] is None and undefined["ci_low"] is None and undefined["n_skipped"] == 3
