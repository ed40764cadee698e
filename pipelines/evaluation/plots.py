"""Plots of an evaluation report, drawn from report.json's data and nothing else (``report_json``'s output, or the
file read back), so a plot cannot disagree with report.json: ROC per class, confusion matrix, reliability diagram,
FROC, and macro AUC per prediction set. :func:`report_figures` re-draws every plot from a saved report.json.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot's global figure registry; saving them to PNG
uses the Agg renderer, so no display is needed. Each function returns its Figure for the caller to save or inspect.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from pipelines.evaluation.bootstrap import Estimate

__all__ = ["auc_figure", "confusion_figure", "estimate_from_json", "froc_figure", "reliability_figure",
           "report_figures", "roc_figure"]

Json = Mapping[str, Any]


def estimate_from_json(figure: Json) -> Estimate:
    """The :class:`Estimate` a report.json figure was written from (null -> NaN), for its one wording."""
    def number(x: Any) -> float:
        return float("nan") if x is None else float(x)

    return Estimate(number(figure["value"]), number(figure["ci_low"]), number(figure["ci_high"]), int(figure["n"]),
                    int(figure["n_patients"]), int(figure["n_resamples"]), int(figure["n_skipped"]),
                    float(figure["confidence"]))


def _text(figure: Json) -> str:
    return estimate_from_json(figure).text()


def roc_figure(name: str, stored: Json) -> Figure:
    """One-vs-rest ROC curve per class of the prediction set ``stored`` (report.json's ``classification.sets[name]``
    or ``classification.oracle``); the legend gives each class's AUC with its interval."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    for cls in stored["confusion_matrix"]["classes"]:
        curve = stored["roc"][cls]
        ax.plot(curve["false_positive_rate"], curve["true_positive_rate"],
                label=f"{cls}: AUC {_text(stored['per_class'][cls]['auc'])}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="_chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)",
           title=f"{name}: ROC, one vs rest\nmacro AUC {_text(stored['macro_auc'])}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def confusion_figure(name: str, stored: Json) -> Figure:
    """Lesion counts by true and predicted (arg-max) class, drawn by scikit-learn's ``ConfusionMatrixDisplay``."""
    fig = Figure(figsize=(6, 4.8))
    ax = fig.add_subplot()
    matrix = stored["confusion_matrix"]
    ConfusionMatrixDisplay(np.array(matrix["counts"]), display_labels=list(matrix["classes"])).plot(
        ax=ax, cmap="Blues", colorbar=True)
    ax.set_title(f"{name}: confusion matrix\naccuracy {_text(stored['accuracy'])}")
    fig.tight_layout()
    return fig


def reliability_figure(name: str, stored: Json) -> Figure:
    """Accuracy per confidence bin (bars, non-empty bins only), the gap to the bin's mean confidence (hatched),
    and the diagonal of perfect calibration; the title gives the ECE with its interval."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    rel = stored["reliability"]
    edges = np.array(rel["bin_edges"], dtype=float)
    filled = np.array(rel["count"]) > 0
    left, width = edges[:-1][filled], np.diff(edges)[filled]
    accuracy = np.array([a for a, f in zip(rel["accuracy"], filled) if f], dtype=float)
    confidence = np.array([c for c, f in zip(rel["confidence"], filled) if f], dtype=float)
    ax.bar(left, accuracy, width=width, align="edge", edgecolor="black", alpha=0.7, label="accuracy in bin")
    ax.bar(left, confidence - accuracy, bottom=accuracy, width=width, align="edge", color="tab:red", alpha=0.25,
           hatch="//", edgecolor="tab:red", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="_perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Confidence (top-class probability)", ylabel="Accuracy",
           title=f"{name}: reliability\nECE {_text(stored['ece'])}")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def froc_figure(detection: Json) -> Figure:
    """The FROC step curve and the sensitivity at each fixed FP/image rate with its interval (report.json's
    ``detection``)."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    curve = detection["froc_curve"]
    ax.plot(curve["fp_per_image"], curve["sensitivity"], drawstyle="steps-post", label="FROC")
    froc = detection["froc"]
    sensitivity = [estimate_from_json(s) for s in froc["sensitivity"]]
    values = np.array([e.value for e in sensitivity])
    low = np.array([e.ci_low for e in sensitivity])
    high = np.array([e.ci_high for e in sensitivity])
    unit = detection.get("unit", "image")  # reports written before 3D have no unit: images
    ax.errorbar(np.array(froc["fp_per_image"], dtype=float), values, yerr=[values - low, high - values], fmt="o",
                capsize=3, label=f"sensitivity at fixed FP/{unit} (95% CI)")
    ax.set_xscale("symlog", linthresh=froc["fp_per_image"][0])
    iou = detection["iou_threshold"]
    hits = "LUNA16 centre hits" if detection.get("hit_criterion") == "centre" else f"IoU {iou:g}"
    ax.set(ylim=(0, 1.01), xlabel=f"False positives per {unit}", ylabel="Sensitivity (lesions found)",
           title=f"FROC at {hits}: CPM {_text(froc['mean_sensitivity'])}\nmAP@{iou:g} {_text(detection['map'])}")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def _rows(classification: Json) -> list[tuple[str, Json]]:
    oracle = classification.get("oracle")
    return [*classification["sets"].items(), *([("oracle", oracle)] if oracle else [])]


def auc_figure(classification: Json) -> Figure:
    """Macro AUC with interval per prediction set (the ablation rows) and the oracle, one row each (report.json's
    ``classification``)."""
    rows = _rows(classification)
    fig = Figure(figsize=(6, 1.2 + 0.5 * len(rows)))
    ax = fig.add_subplot()
    macro = [estimate_from_json(stored["macro_auc"]) for _, stored in rows]
    values = np.array([e.value for e in macro])
    low = np.array([e.ci_low for e in macro])
    high = np.array([e.ci_high for e in macro])
    ax.errorbar(values, np.arange(len(rows)), xerr=[values - low, high - values], fmt="o", capsize=3)
    ax.set_yticks(np.arange(len(rows)), [name for name, _ in rows])
    ax.invert_yaxis()
    ax.set(xlabel="Macro AUC (one vs rest), 95% CI", title="Macro AUC by prediction set")
    fig.tight_layout()
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


def report_figures(data: Json) -> list[tuple[str, Figure]]:
    """Every plot of a report, as (PNG file name, Figure), from report.json's data (``report_json`` or the file)."""
    figures: list[tuple[str, Figure]] = []
    classification = data.get("classification")
    if classification:
        for name, stored in _rows(classification):
            figures += [(f"roc_{_slug(name)}.png", roc_figure(name, stored)),
                        (f"confusion_{_slug(name)}.png", confusion_figure(name, stored)),
                        (f"reliability_{_slug(name)}.png", reliability_figure(name, stored))]
        figures.append(("macro_auc.png", auc_figure(classification)))
    if data.get("detection"):
        figures.append(("froc.png", froc_figure(data["detection"])))
    return figures
