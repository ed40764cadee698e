"""Plots of an evaluation report, drawn only from the report's own numbers (so a plot cannot disagree with
report.json): ROC per class, confusion matrix, reliability diagram, FROC, and macro AUC per prediction set.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot's global figure registry; saving them to PNG
uses the Agg renderer, so no display is needed. Each function returns its Figure for the caller to save or inspect.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from pipelines.evaluation.classification import ClassificationMetrics
from pipelines.evaluation.detection import DetectionMetrics
from pipelines.evaluation.evaluate import EvaluationReport

__all__ = ["auc_figure", "confusion_figure", "froc_figure", "reliability_figure", "roc_figure"]


def roc_figure(metrics: ClassificationMetrics) -> Figure:
    """One-vs-rest ROC curve per class; the legend gives each class's AUC with its interval."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for name in metrics.class_names:
        curve = metrics.roc[name]
        ax.plot(curve.false_positive_rate, curve.true_positive_rate, label=f"{name}: AUC {metrics.auc[name].text()}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="_chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)",
           title=f"{metrics.name}: ROC, one vs rest\nmacro AUC {metrics.macro_auc.text()}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def confusion_figure(metrics: ClassificationMetrics) -> Figure:
    """Lesion counts by true and predicted (arg-max) class, drawn by scikit-learn's ``ConfusionMatrixDisplay``."""
    fig = Figure(figsize=(6, 4.8))
    ax = fig.add_subplot()
    counts = np.array(metrics.confusion.counts)
    ConfusionMatrixDisplay(counts, display_labels=list(metrics.class_names)).plot(ax=ax, cmap="Blues", colorbar=True)
    ax.set_title(f"{metrics.name}: confusion matrix\naccuracy {metrics.accuracy.text()}")
    fig.tight_layout()
    return fig


def reliability_figure(metrics: ClassificationMetrics) -> Figure:
    """Accuracy per confidence bin (bars, non-empty bins only), the gap to the bin's mean confidence (hatched),
    and the diagonal of perfect calibration; the title gives the ECE with its interval."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    rel = metrics.reliability
    edges = np.array(rel.bin_edges)
    filled = np.array(rel.count) > 0
    left, width = edges[:-1][filled], np.diff(edges)[filled]
    accuracy, confidence = np.array(rel.accuracy)[filled], np.array(rel.confidence)[filled]
    ax.bar(left, accuracy, width=width, align="edge", edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.bar(left, confidence - accuracy, bottom=accuracy, width=width, align="edge", color="tab:red", alpha=0.25,
           hatch="//", edgecolor="tab:red", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="_perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence (top-class probability)", ylabel="Accuracy",
           title=f"{metrics.name}: reliability\nECE {metrics.ece.text()}")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def froc_figure(detection: DetectionMetrics) -> Figure:
    """The FROC step curve and the sensitivity at each fixed FP/image rate with its interval."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    curve = detection.froc
    ax.plot(curve.false_positives_per_image, curve.sensitivity, drawstyle="steps-post", label="FROC")
    values = np.array([e.value for e in detection.sensitivity])
    low = np.array([e.ci_low for e in detection.sensitivity])
    high = np.array([e.ci_high for e in detection.sensitivity])
    ax.errorbar(np.array(detection.fp_rates), values, yerr=[values - low, high - values], fmt="o", capsize=3,
                label="sensitivity at fixed FP/image (95% CI)")
    ax.set_xscale("symlog", linthresh=detection.fp_rates[0])
    ax.set(ylim=(0, 1.01), xlabel="False positives per image", ylabel="Sensitivity (lesions found)",
           title=f"FROC at IoU {detection.iou_threshold:g}: CPM {detection.mean_sensitivity.text()}\n"
                 f"mAP@{detection.iou_threshold:g} {detection.mean_average_precision.text()}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def auc_figure(report: EvaluationReport) -> Figure:
    """Macro AUC with interval per prediction set (the ablation rows) and the oracle, one row each."""
    rows = [*report.models, *([report.oracle] if report.oracle else [])]
    fig = Figure(figsize=(6, 1.2 + 0.5 * len(rows)))
    ax = fig.add_subplot()
    values = np.array([m.macro_auc.value for m in rows])
    low = np.array([m.macro_auc.ci_low for m in rows])
    high = np.array([m.macro_auc.ci_high for m in rows])
    ax.errorbar(values, np.arange(len(rows)), xerr=[values - low, high - values], fmt="o", capsize=3)
    ax.set_yticks(np.arange(len(rows)), [m.name for m in rows])
    ax.invert_yaxis()
    ax.set(xlabel="Macro AUC (one vs rest), 95% CI", title="Macro AUC by prediction set")
    fig.tight_layout()
    return fig
