"""Evaluate named prediction sets (and, optionally, detections) against the truth: the library behind
``dicom-ai-node evaluate``. Plain arrays in, an :class:`EvaluationReport` out; no model, no DICOM, no files
(``report.write_report`` writes them).

One set of patient resamples serves every figure, so all intervals come from the same resamples and differences
between prediction sets (ablation rows, fusion vs image only) are paired. Comparisons report the difference in AUC
with its bootstrap interval and DeLong's test with patients as clusters (see ``delong``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.evaluation.bootstrap import Estimate, estimate, patient_resamples
from pipelines.evaluation.classification import ClassificationMetrics, classification_metrics, replicate_figures
from pipelines.evaluation.delong import DeLongTest, delong_macro_test
from pipelines.evaluation.detection import (
    FROC_RATES, HIT_CRITERIA, DetectionMetrics, ImageDetections, detection_metrics,
)

__all__ = ["AucComparison", "EvaluationConfig", "EvaluationReport", "LesionClassification", "evaluate"]

MACRO = "macro"
ORACLE = "oracle"


@dataclass(frozen=True)
class EvaluationConfig:
    """How figures and intervals are computed; recorded in the report so that a reader can repeat it."""

    n_resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95
    ece_bins: int = 15
    iou_threshold: float = 0.5
    fp_rates: tuple[float, ...] = FROC_RATES
    max_detections: int = 100
    hit_criterion: str = "iou"  # FROC hits: "iou" (>= iou_threshold) or "centre" (LUNA16; see detection.py)

    def __post_init__(self) -> None:
        if self.n_resamples < 1:
            raise ValueError(f'Argument "n_resamples" must be at least 1, got {self.n_resamples}.')
        if not 0 < self.confidence < 1:
            raise ValueError(f'Argument "confidence" must lie in (0, 1), got {self.confidence}.')
        if self.ece_bins < 1:
            raise ValueError(f'Argument "ece_bins" must be at least 1, got {self.ece_bins}.')
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f'Argument "iou_threshold" must lie in (0, 1], got {self.iou_threshold}.')
        if not self.fp_rates or any(r <= 0 for r in self.fp_rates):
            raise ValueError(f'Argument "fp_rates" must be positive FP-per-image rates, got {self.fp_rates}.')
        if self.hit_criterion not in HIT_CRITERIA:
            raise ValueError(f'Argument "hit_criterion" must be one of {HIT_CRITERIA}, got {self.hit_criterion!r}.')


@dataclass(frozen=True)
class LesionClassification:
    """Lesions with their true class and patient, and named (n, K) class-probability sets to evaluate on them.

    ``predictions`` holds the rows of an ablation table (e.g. image, image+labs, image+notes, all), all on the same
    lesions in the same order. ``oracle`` holds each lesion's true class probabilities where the data generator
    knows them: the best any model could do, reported beside the models.
    """

    class_names: tuple[str, ...]
    labels: np.ndarray  # (n,) class index per lesion
    patient_ids: tuple[str, ...]  # (n,)
    predictions: Mapping[str, np.ndarray]  # name -> (n, K)
    oracle: np.ndarray | None = None  # (n, K)

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if k < 2:
            raise ValueError(f'Argument "class_names" must name at least 2 classes, got {self.class_names}.')
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError('Argument "labels" must be a non-empty 1-D array of class indices.')
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f'Argument "labels" must hold class indices in [0, {k}).')
        absent = [name for c, name in enumerate(self.class_names) if not np.any(labels == c)]
        if absent:
            raise ValueError(f'Argument "labels" has no lesion of class {absent}: its AUC and recall are undefined.')
        if len(self.patient_ids) != labels.size:
            raise ValueError(f'Argument "patient_ids" must have one entry per lesion ({labels.size}).')
        if not self.predictions:
            raise ValueError('Argument "predictions" must hold at least one named prediction set.')
        if self.oracle is not None and ORACLE in self.predictions:
            raise ValueError(f'Argument "predictions" must not name a set "{ORACLE}": that name is the oracle\'s.')
        sets = {name: self._probabilities(f'predictions["{name}"]', p, labels.size) for name, p in self.predictions.items()}
        object.__setattr__(self, "labels", labels.astype(np.intp))
        object.__setattr__(self, "patient_ids", tuple(str(p) for p in self.patient_ids))
        object.__setattr__(self, "predictions", sets)
        if self.oracle is not None:
            object.__setattr__(self, "oracle", self._probabilities("oracle", self.oracle, labels.size))

    def _probabilities(self, argument: str, values: np.ndarray, n: int) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (n, len(self.class_names)):
            raise ValueError(f'Argument "{argument}" must have shape ({n}, {len(self.class_names)}), got {array.shape}.')
        if not np.all(np.isfinite(array)):
            raise ValueError(f'Argument "{argument}" must be finite.')
        return array


@dataclass(frozen=True)
class AucComparison:
    """AUC of set ``a`` minus set ``b`` for one class (one-vs-rest) or ``"macro"``: bootstrap interval and DeLong."""

    a: str
    b: str
    class_name: str
    difference: Estimate
    delong: DeLongTest


@dataclass(frozen=True)
class EvaluationReport:
    """Everything ``report.write_report`` turns into report.json, report.md and plots."""

    config: EvaluationConfig
    n_patients: int
    class_names: tuple[str, ...] = ()
    n_lesions: int = 0
    models: tuple[ClassificationMetrics, ...] = ()
    oracle: ClassificationMetrics | None = None
    comparisons: tuple[AucComparison, ...] = ()
    detection: DetectionMetrics | None = None


def evaluate(
    classification: LesionClassification | None = None,
    detection: Sequence[ImageDetections] | None = None,
    comparisons: Sequence[tuple[str, str]] = (),
    config: EvaluationConfig = EvaluationConfig(),
) -> EvaluationReport:
    """Figures with patient-level bootstrap intervals for every prediction set, the oracle, the detections, and
    the paired comparisons ``(a, b)`` (AUC of a minus b, per class and macro)."""
    if classification is None and not detection:
        raise ValueError("Nothing to evaluate: give lesion classifications, detections or both.")
    known = set(classification.predictions) if classification else set()
    unknown = sorted({name for pair in comparisons for name in pair} - known)
    if unknown:
        raise ValueError(f'Argument "comparisons" names prediction sets that are not given: {unknown}.')
    patients = list(classification.patient_ids) if classification else []
    patients += [im.patient_id for im in detection or ()]
    resamples = patient_resamples(patients, config.n_resamples, np.random.default_rng(config.seed))
    n_patients = len(resamples.patient_ids)

    detection_result = None
    if detection:
        image_patients = [im.patient_id for im in detection]
        detection_result = detection_metrics(
            detection, resamples.weights(image_patients), len(set(image_patients)), config.iou_threshold,
            config.fp_rates, config.max_detections, config.confidence, config.hit_criterion,
        )
    if classification is None:
        return EvaluationReport(config=config, n_patients=n_patients, detection=detection_result)

    weights = resamples.weights(classification.patient_ids)
    labels = classification.labels
    lesion_patients = len(set(classification.patient_ids))
    replicates = {
        name: replicate_figures(labels, probabilities, weights, config.ece_bins)
        for name, probabilities in classification.predictions.items()
    }

    def metrics(name: str, probabilities: np.ndarray, reps: Mapping[str, np.ndarray]) -> ClassificationMetrics:
        return classification_metrics(name, classification.class_names, labels, probabilities, reps, lesion_patients,
                                      config.ece_bins, config.confidence)

    models = tuple(metrics(name, p, replicates[name]) for name, p in classification.predictions.items())
    oracle = None
    if classification.oracle is not None:
        oracle = metrics(ORACLE, classification.oracle,
                         replicate_figures(labels, classification.oracle, weights, config.ece_bins))
    by_name = {m.name: m for m in models}
    rows = []
    for a, b in comparisons:
        per_class, macro = delong_macro_test(labels, classification.predictions[a], classification.predictions[b],
                                             classification.patient_ids, config.confidence)
        keys = [f"auc/{c}" for c in range(len(classification.class_names))] + ["macro_auc"]
        names = [*classification.class_names, MACRO]
        points = [*(by_name[a].auc[c].value - by_name[b].auc[c].value for c in classification.class_names),
                  by_name[a].macro_auc.value - by_name[b].macro_auc.value]
        for key, class_name, point, test in zip(keys, names, points, (*per_class, macro)):
            difference = estimate(point, replicates[a][key] - replicates[b][key], labels.size, lesion_patients,
                                  config.confidence)
            rows.append(AucComparison(a, b, class_name, difference, test))
    return EvaluationReport(
        config=config,
        n_patients=n_patients,
        class_names=classification.class_names,
        n_lesions=int(labels.size),
        models=models,
        oracle=oracle,
        comparisons=tuple(rows),
        detection=detection_result,
    )
