"""Evaluation a reviewer accepts: figures with patient-level bootstrap intervals, paired DeLong tests, plots.

Computes from plain arrays (no model, no DICOM) what ``dicom-ai-node evaluate`` reports: lesion classification
(one-vs-rest and macro AUC, accuracy, precision, recall, F1, ECE) for named prediction sets (ablation rows) and the
oracle, paired AUC comparisons, and detection mAP@IoU and FROC, on 2D images or 3D scans (FROC hits by IoU or by
LUNA16's centre criterion, with its CPM). Each module's docstring names its statistics and their references.
``run.evaluate_bundle`` runs a bundle over a datalist (``run3d`` for 3D bundles). Typical use::

    report = evaluate(LesionClassification(classes, labels, patients, {"image": p_img, "all": p_all}, oracle),
                      detections, comparisons=[("all", "image")])
    write_report(report, Path("out"))
"""

from pipelines.evaluation.bootstrap import Estimate, PatientResamples, patient_resamples
from pipelines.evaluation.classification import ClassificationMetrics, ConfusionMatrix, RocCurve
from pipelines.evaluation.calibration import Reliability, expected_calibration_error
from pipelines.evaluation.delong import DeLongTest, auc_covariance, delong_macro_test, delong_test
from pipelines.evaluation.detection import FROC_RATES, DetectionMetrics, FrocCurve, ImageDetections
from pipelines.evaluation.evaluate import (
    AucComparison,
    EvaluationConfig,
    EvaluationReport,
    LesionClassification,
    evaluate,
)
from pipelines.evaluation.report import ReportFiles, report_json, report_markdown, write_report

__all__ = [
    "FROC_RATES",
    "AucComparison",
    "ClassificationMetrics",
    "ConfusionMatrix",
    "DeLongTest",
    "DetectionMetrics",
    "Estimate",
    "EvaluationConfig",
    "EvaluationReport",
    "FrocCurve",
    "ImageDetections",
    "LesionClassification",
    "PatientResamples",
    "Reliability",
    "ReportFiles",
    "RocCurve",
    "auc_covariance",
    "delong_macro_test",
    "delong_test",
    "evaluate",
    "expected_calibration_error",
    "patient_resamples",
    "report_json",
    "report_markdown",
    "write_report",
]
