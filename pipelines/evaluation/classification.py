"""Lesion classification figures for one prediction set: one-vs-rest and macro AUC, accuracy, precision, recall,
F1 (per class and macro), top-label ECE, confusion matrix, ROC curves and reliability bins.

Point estimates come from scikit-learn (``roc_auc_score`` per class, macro = unweighted mean of the one-vs-rest
AUCs as in ``multi_class="ovr", average="macro"``; ``precision_recall_fscore_support`` with ``zero_division=0``;
``accuracy_score``; ``confusion_matrix``; ``roc_curve``). The bootstrap replicates are the same statistics under
each resample's lesion weights, computed for all resamples at once (the tests check them against scikit-learn with
``sample_weight``). A class with no true lesion in a resample makes its AUC, recall and F1, and the macro figures,
undefined there (NaN, skipped); precision of a class never predicted is 0, as scikit-learn's ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from pipelines.evaluation.auc import weighted_auc
from pipelines.evaluation.bootstrap import Estimate, estimate
from pipelines.evaluation.calibration import Reliability, expected_calibration_error, reliability

__all__ = ["ClassificationMetrics", "ConfusionMatrix", "RocCurve", "classification_metrics", "point_figures",
           "replicate_figures"]


@dataclass(frozen=True)
class RocCurve:
    """One-vs-rest ROC curve of one class (scikit-learn's ``roc_curve``)."""

    false_positive_rate: tuple[float, ...]
    true_positive_rate: tuple[float, ...]


@dataclass(frozen=True)
class ConfusionMatrix:
    """Lesion counts, rows = true class, columns = predicted (arg-max) class. Data, so no interval."""

    class_names: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class ClassificationMetrics:
    """Every classification figure of one named prediction set, each with its bootstrap interval."""

    name: str
    class_names: tuple[str, ...]
    macro_auc: Estimate
    auc: Mapping[str, Estimate]
    accuracy: Estimate
    macro_precision: Estimate
    macro_recall: Estimate
    macro_f1: Estimate
    precision: Mapping[str, Estimate]
    recall: Mapping[str, Estimate]
    f1: Mapping[str, Estimate]
    ece: Estimate
    confusion: ConfusionMatrix
    roc: Mapping[str, RocCurve]
    reliability: Reliability


def point_figures(labels: np.ndarray, probabilities: np.ndarray, ece_bins: int) -> dict[str, float]:
    """Figures on the data as given, keyed ``auc/<class index>``, ``macro_auc``, ``accuracy``, ``f1/<k>``, ..."""
    k = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    figures: dict[str, float] = {}
    aucs = [float(roc_auc_score(labels == c, probabilities[:, c])) for c in range(k)]
    for c, auc in enumerate(aucs):
        figures[f"auc/{c}"] = auc
    figures["macro_auc"] = float(np.mean(aucs))
    figures["accuracy"] = float(accuracy_score(labels, predicted))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=list(range(k)), zero_division=0.0
    )
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        for c in range(k):
            figures[f"{name}/{c}"] = float(values[c])
        figures[f"macro_{name}"] = float(np.mean(values))
    figures["ece"] = float(expected_calibration_error(probabilities, labels, ece_bins)[0])
    return figures


def replicate_figures(
    labels: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, ece_bins: int
) -> dict[str, np.ndarray]:
    """The same figures as :func:`point_figures` under each row of ``weights`` (n_resamples, n lesions)."""
    n, k = probabilities.shape
    predicted = probabilities.argmax(axis=1)
    figures: dict[str, np.ndarray] = {}
    aucs = np.stack([weighted_auc(probabilities[:, c], labels == c, weights) for c in range(k)])
    for c in range(k):
        figures[f"auc/{c}"] = aucs[c]
    figures["macro_auc"] = aucs.mean(axis=0)  # NaN when any class's AUC is undefined
    cell = np.zeros((n, k * k))
    cell[np.arange(n), labels * k + predicted] = 1.0
    confusion = (weights @ cell).reshape(-1, k, k)
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    true_totals = confusion.sum(axis=2)
    predicted_totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted_totals > 0, hits / np.where(predicted_totals > 0, predicted_totals, 1), 0.0)
        recall = np.where(true_totals > 0, hits / np.where(true_totals > 0, true_totals, 1), np.nan)
        both = precision + recall
        f1 = np.where(both > 0, 2 * precision * recall / np.where(both > 0, both, 1), 0.0)
        f1 = np.where(np.isnan(recall), np.nan, f1)
        figures["accuracy"] = hits.sum(axis=1) / confusion.sum(axis=(1, 2))
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        for c in range(k):
            figures[f"{name}/{c}"] = values[:, c]
        # Macro figures are defined only where every class is present, like the macro AUC.
        figures[f"macro_{name}"] = np.where(np.isnan(recall).any(axis=1), np.nan, values.mean(axis=1))
    figures["ece"] = expected_calibration_error(probabilities, labels, ece_bins, weights)
    return figures


def classification_metrics(
    name: str,
    class_names: tuple[str, ...],
    labels: np.ndarray,
    probabilities: np.ndarray,
    replicates: Mapping[str, np.ndarray],
    n_patients: int,
    ece_bins: int = 15,
    confidence: float = 0.95,
) -> ClassificationMetrics:
    """All figures of one prediction set (n, K) against integer ``labels``, with intervals from the
    :func:`replicate_figures` of the same set (computed by the caller, which also pairs them across sets)."""
    point = point_figures(labels, probabilities, ece_bins)
    n = labels.size

    def fig(key: str) -> Estimate:
        return estimate(point[key], replicates[key], n, n_patients, confidence)

    def per_class(metric: str) -> dict[str, Estimate]:
        return {cls: fig(f"{metric}/{c}") for c, cls in enumerate(class_names)}

    roc = {}
    for c, cls in enumerate(class_names):
        fpr, tpr, _ = roc_curve(labels == c, probabilities[:, c])
        roc[cls] = RocCurve(tuple(float(x) for x in fpr), tuple(float(x) for x in tpr))
    counts = confusion_matrix(labels, probabilities.argmax(axis=1), labels=list(range(len(class_names))))
    return ClassificationMetrics(
        name=name,
        class_names=class_names,
        macro_auc=fig("macro_auc"),
        auc=per_class("auc"),
        accuracy=fig("accuracy"),
        macro_precision=fig("macro_precision"),
        macro_recall=fig("macro_recall"),
        macro_f1=fig("macro_f1"),
        precision=per_class("precision"),
        recall=per_class("recall"),
        f1=per_class("f1"),
        ece=fig("ece"),
        confusion=ConfusionMatrix(class_names, tuple(tuple(int(x) for x in row) for row in counts)),
        roc=roc,
        reliability=reliability(probabilities, labels, ece_bins),
    )
