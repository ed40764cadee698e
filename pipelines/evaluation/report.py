"""Write an :class:`EvaluationReport` as report.json (every figure with its interval), report.md (the tables a
reviewer reads) and PNG plots. The only module here that touches files.

report.json schema ``dicom-ai-node/evaluation/1``: every figure is ``{"value", "ci_low", "ci_high", "n",
"n_patients", "n_resamples", "n_skipped", "confidence", "ci_method"}`` (null where undefined). Curves (ROC,
FROC, reliability bins) and the confusion matrix are data, not estimates, and are stored as arrays.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.evaluation.bootstrap import Estimate
from pipelines.evaluation.classification import ClassificationMetrics
from pipelines.evaluation.detection import DetectionMetrics
from pipelines.evaluation.evaluate import EvaluationReport
from pipelines.evaluation.plots import report_figures

__all__ = ["SCHEMA", "ReportFiles", "report_json", "report_markdown", "write_report"]

SCHEMA = "dicom-ai-node/evaluation/1"
METHODS = (
    "Intervals: {percent:g}% percentile intervals from {n_resamples} patient-level bootstrap resamples "
    "(numpy Generator, seed {seed}); a patient's lesions and images are resampled together. Resamples on which a "
    "figure is undefined (a class absent) are skipped and counted in `n_skipped`.",
    "AUC: one-vs-rest per class; macro AUC = unweighted mean over classes. Precision, recall, F1 of the arg-max "
    "class (precision of a class never predicted = 0); macro = unweighted mean. ECE: top-label, {ece_bins} "
    "equal-width bins (Guo et al. 2017).",
    "Comparisons: difference in AUC (a - b) with its paired bootstrap interval, and DeLong's test (DeLong et al. "
    "1988; Sun & Xu 2014) with patients as clusters (Obuchowski 1997); macro: variance of the mean of the "
    "per-class differences from the joint covariance of all one-vs-rest AUCs.",
    "Detection: matches by MONAI's matching_batch at IoU >= {iou_threshold:g} (greedy by score, at most "
    "{max_detections} detections per image); mAP by MONAI's COCOMetric (101-point interpolated AP, one lesion "
    "class); FROC sensitivity at a rate = best sensitivity among thresholds with FP/image <= rate; CPM = mean "
    "over the rates (Setio et al. 2017).",
)
CENTRE_METHOD = (
    "FROC hits (3D scans, so FP/image reads FP per scan): LUNA16's centre criterion (Setio et al. 2017): a detection "
    "hits a nodule when its box centre lies within the nodule's radius (the nodule box's half-extent per axis) of "
    "the nodule's centre; in score order each hit takes the nearest nodule not yet found; further detections on a "
    "found nodule are merged into it, neither hits nor false positives. mAP stays matched at IoU >= "
    "{iou_threshold:g} (MONAI's box_iou on the 3D boxes)."
)


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by :func:`write_report`."""

    json: Path
    markdown: Path
    plots: tuple[Path, ...]


def _finite(value: Any) -> Any:
    # JSON has no inf or NaN (z is infinite when two sets differ with zero variance): write null.
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _figure(e: Estimate) -> dict[str, Any]:
    return e.to_json()


def _classification_json(m: ClassificationMetrics) -> dict[str, Any]:
    return {
        "macro_auc": _figure(m.macro_auc),
        "accuracy": _figure(m.accuracy),
        "macro_precision": _figure(m.macro_precision),
        "macro_recall": _figure(m.macro_recall),
        "macro_f1": _figure(m.macro_f1),
        "ece": _figure(m.ece),
        "per_class": {
            name: {
                "auc": _figure(m.auc[name]),
                "precision": _figure(m.precision[name]),
                "recall": _figure(m.recall[name]),
                "f1": _figure(m.f1[name]),
            }
            for name in m.class_names
        },
        "confusion_matrix": {"rows": "true class", "columns": "predicted class", "classes": list(m.class_names),
                             "counts": [list(row) for row in m.confusion.counts]},
        "roc": {name: {"false_positive_rate": list(c.false_positive_rate),
                       "true_positive_rate": list(c.true_positive_rate)} for name, c in m.roc.items()},
        "reliability": {"bin_edges": list(m.reliability.bin_edges), "count": list(m.reliability.count),
                        "confidence": [_finite(x) for x in m.reliability.confidence],
                        "accuracy": [_finite(x) for x in m.reliability.accuracy]},
    }


def _detection_json(d: DetectionMetrics) -> dict[str, Any]:
    return {
        "iou_threshold": d.iou_threshold,
        "hit_criterion": d.hit_criterion,
        "unit": "scan" if d.spatial_dims == 3 else "image",
        "n_images": d.n_images,
        "n_lesions": d.n_lesions,
        "n_detections": d.n_detections,
        "map": _figure(d.mean_average_precision),
        "froc": {
            "fp_per_image": list(d.fp_rates),
            "sensitivity": [_figure(e) for e in d.sensitivity],
            "mean_sensitivity": _figure(d.mean_sensitivity),
        },
        "froc_curve": {"fp_per_image": list(d.froc.false_positives_per_image),
                       "sensitivity": list(d.froc.sensitivity)},
    }


def report_json(report: EvaluationReport, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as JSON-ready data (see the module docstring for the schema); ``provenance`` (what was evaluated,
    how: bundle, datalist, split) is stored as given under "provenance"."""
    out: dict[str, Any] = {"schema": SCHEMA, "config": asdict(report.config), "n_patients": report.n_patients}
    if provenance:
        out["provenance"] = dict(provenance)
    if report.models:
        out["classification"] = {
            "class_names": list(report.class_names),
            "n_lesions": report.n_lesions,
            "sets": {m.name: _classification_json(m) for m in report.models},
            "oracle": _classification_json(report.oracle) if report.oracle else None,
            "comparisons": [
                {
                    "a": c.a,
                    "b": c.b,
                    "class": c.class_name,
                    "difference": _figure(c.difference),
                    "delong": {key: _finite(value) for key, value in asdict(c.delong).items()},
                }
                for c in report.comparisons
            ],
        }
    if report.detection:
        out["detection"] = _detection_json(report.detection)
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    lines = ["## What was evaluated", ""]
    for key, value in provenance.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        lines.append(f"- {key.replace('_', ' ')}: {value}")
    return [*lines, ""]


def report_markdown(report: EvaluationReport, provenance: Mapping[str, Any] | None = None) -> str:
    """Tables of figure, value and interval for a reviewer, with the methods stated underneath."""
    cfg = report.config
    lines = ["# Evaluation report", ""]
    if provenance and provenance.get("resamples_below_minimum"):
        lines += [f"**Exploratory: only {cfg.n_resamples} bootstrap resamples (fewer than 1000); the intervals are "
                  "not stable enough to report.**", ""]
    lines += [f"{report.n_patients} patients."]
    if report.models:
        lines += [f"{report.n_lesions} lesions; classes: {', '.join(report.class_names)}.", "",
                  "## Classification by prediction set", ""]
        rows = [*report.models, *([report.oracle] if report.oracle else [])]
        lines += _table(
            ["prediction set", "macro AUC (95% CI)", "accuracy", "macro F1", "macro precision", "macro recall", "ECE"],
            [[m.name + (" (true class probabilities)" if m is report.oracle else ""), m.macro_auc.text(),
              m.accuracy.text(), m.macro_f1.text(), m.macro_precision.text(), m.macro_recall.text(), m.ece.text()]
             for m in rows],
        )
        for m in rows:
            lines += [f"### {m.name}: per class", ""]
            lines += _table(["class", "AUC (one vs rest)", "precision", "recall", "F1"],
                            [[c, m.auc[c].text(), m.precision[c].text(), m.recall[c].text(), m.f1[c].text()]
                             for c in m.class_names])
        if report.comparisons:
            lines += ["## Paired comparisons (AUC of a minus b, same lesions)", ""]
            lines += _table(
                ["a", "b", "class", "difference, bootstrap 95% CI", "DeLong SE", "DeLong 95% CI", "z", "p"],
                [[c.a, c.b, c.class_name, c.difference.text(), f"{c.delong.se:.3f}",
                  f"{c.delong.ci_low:.3f} to {c.delong.ci_high:.3f}", f"{c.delong.z:.2f}", _p(c.delong.p_value)]
                 for c in report.comparisons],
            )
    if report.detection:
        d = report.detection
        unit = "scan" if d.spatial_dims == 3 else "image"
        hits = "LUNA16 centre criterion" if d.hit_criterion == "centre" else f"IoU >= {d.iou_threshold:g}"
        lines += ["## Detection", "",
                  f"{d.n_images} {unit}s, {d.n_lesions} lesions, {d.n_detections} detections kept; FROC hits by "
                  f"{hits}.", ""]
        lines += _table(
            ["figure", "value (95% CI)"],
            [[f"mAP@{d.iou_threshold:g}", d.mean_average_precision.text()],
             *([f"sensitivity at {r:g} FP/{unit}", e.text()] for r, e in zip(d.fp_rates, d.sensitivity)),
             ["CPM (mean sensitivity over those rates)", d.mean_sensitivity.text()]],
        )
    skipped = _skipped(report)
    if provenance:
        lines += _provenance_lines(provenance)
    methods = [*METHODS, *([CENTRE_METHOD] if report.detection and report.detection.hit_criterion == "centre" else [])]
    lines += ["## Methods", "", *(f"- {m.format(percent=100 * cfg.confidence, **asdict(cfg))}" for m in methods), ""]
    if skipped:
        lines += ["Figures with skipped resamples (undefined there): "
                  + "; ".join(f"{name}: {n}" for name, n in skipped) + ".", ""]
    return "\n".join(lines)


def _skipped(report: EvaluationReport) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "n_skipped" in node and node["n_skipped"]:
                found.append((path, int(node["n_skipped"])))
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(report_json(report), "")
    return found


def write_report(report: EvaluationReport, out_dir: Path, provenance: Mapping[str, Any] | None = None) -> ReportFiles:
    """Write report.json, report.md and the PNG plots into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    data = report_json(report, provenance)
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(report_markdown(report, provenance))
    # Drawn from the JSON data just written, not from the report object: a plot shows report.json's numbers.
    figures = report_figures(json.loads(json_path.read_text()))
    plots = []
    for name, fig in figures:
        fig.savefig(out_dir / name, dpi=110)
        plots.append(out_dir / name)
    return ReportFiles(json=json_path, markdown=md_path, plots=tuple(plots))
