"""Lesion detection figures: mAP at one IoU threshold and FROC (sensitivity at fixed false positives per image).

An "image" is a 2D image (boxes x0, y0, x1, y1 in pixels) or a 3D scan (x0, y0, z0, x1, y1, z1 in mm); in 3D
the FROC rates are false positives per scan, as LUNA16 counts them.

* Matching: MONAI's ``matching_batch`` (nnDetection's port of pycocotools): per image, detections in descending
  score order each take the unmatched ground-truth box of highest IoU >= the threshold (0.5); a second detection
  on a matched lesion is a false positive; at most ``max_detections`` per image (COCO's 100). Boxes are
  (x0, y0, x1, y1) pixels, IoU by ``monai.data.box_utils.box_iou``.
* mAP@IoU: MONAI's ``COCOMetric`` (101-point interpolated precision, Everingham et al. 2010; Lin et al. 2014),
  over one class "lesion": stage 1 of our pipelines localises lesions whatever their class, which stage 2 decides,
  so mAP here equals the lesion class's AP. In 3D, MONAI's ``box_iou`` takes the six-column boxes as they are. A bootstrap resample re-weights images by their patient's count;
  matching is per image, so the resampled AP re-aggregates the same matches with weights. That re-aggregation is
  ours (vectorised, MONAI's computation with cumulative *weighted* sums) and equals ``COCOMetric`` on the
  resample's image list (tested).
* FROC (Chakraborty 1990; Setio et al. 2017, LUNA16): operating points at every distinct score threshold,
  sensitivity = matched lesions / lesions, FP/image = unmatched detections / images (images without lesions
  count). Sensitivity at a rate r is the best sensitivity among operating points with FP/image <= r: a point a
  user can pick a threshold for, not an interpolation between two (MONAI's ``compute_froc_score`` and CAMELYON16
  interpolate linearly; the tests check our operating points against MONAI's ``compute_froc_curve_data``).
  Their mean over the rates is LUNA16's competition performance metric (CPM).
* FROC hits by the LUNA16 centre criterion (``hit_criterion="centre"``, Setio et al. 2017, the challenge's
  evaluation script): a detection hits a lesion when the detection box's centre lies within the lesion's radius of
  the lesion's centre, the radius being the lesion box's half-extent on each axis (an ellipsoid; a sphere for a
  cube). In descending score order a hit takes the nearest (relative to the radius) lesion not yet found; a
  detection whose only lesions are already found is a duplicate and counts neither as hit nor as false positive
  (the script merges it into the lesion's candidate). mAP stays matched by IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.evaluation.bootstrap import Estimate, estimate

__all__ = [
    "FROC_RATES",
    "HIT_CRITERIA",
    "DetectionMetrics",
    "FrocCurve",
    "ImageDetections",
    "MatchedDetections",
    "detection_metrics",
    "froc_curve",
    "froc_operating_points",
    "centre_similarity",
    "match_centres",
    "match_detections",
    "monai_average_precision",
    "weighted_average_precision",
    "weighted_froc_sensitivity",
]

FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's and MONAI's COCOMetric's recall thresholds
HIT_CRITERIA = ("iou", "centre")  # what makes a detection a FROC hit: IoU >= the threshold, or LUNA16's centre rule


@dataclass(frozen=True)
class ImageDetections:
    """One image's ground-truth lesion boxes and the detector's scored boxes: (x0, y0, x1, y1) pixels of a 2D image
    or, with ``spatial_dims`` 3, (x0, y0, z0, x1, y1, z1) mm of a scan."""

    patient_id: str
    truth_boxes: np.ndarray  # (G, 2 * spatial_dims)
    boxes: np.ndarray  # (D, 2 * spatial_dims)
    scores: np.ndarray  # (D,)
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        # Coerce once here so that matching can rely on shapes; frozen, hence object.__setattr__.
        if self.spatial_dims not in (2, 3):
            raise ValueError(f'Argument "spatial_dims" must be 2 or 3, got {self.spatial_dims}.')
        dims = self.spatial_dims
        order = ("x0, y0, x1, y1", "x1 >= x0 and y1 >= y0") if dims == 2 else (
            "x0, y0, z0, x1, y1, z1", "x1 >= x0, y1 >= y0 and z1 >= z0")
        for name in ("truth_boxes", "boxes"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.size % (2 * dims):
                raise ValueError(f'Argument "{name}" must hold ({order[0]}) boxes, {2 * dims} numbers each.')
            value = value.reshape(-1, 2 * dims)
            if np.any(value[:, dims:] < value[:, :dims]):
                raise ValueError(f'Argument "{name}" must hold ({order[0]}) boxes with {order[1]}.')
            object.__setattr__(self, name, value)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if scores.size != self.boxes.shape[0]:
            raise ValueError(f'Argument "scores" must have one score per box ({self.boxes.shape[0]}), got {scores.size}.')
        object.__setattr__(self, "scores", scores)


@dataclass(frozen=True)
class MatchedDetections:
    """All kept detections in descending score order (ties in image order, as MONAI sorts them)."""

    image: np.ndarray  # (D,) index of the detection's image
    score: np.ndarray  # (D,)
    true_positive: np.ndarray  # (D,) bool
    lesions_per_image: np.ndarray  # (n_images,)
    raw: tuple[dict[int, dict[str, np.ndarray]], ...]  # MONAI's matching_batch output, for COCOMetric


@dataclass(frozen=True)
class FrocCurve:
    """The FROC step curve's corners: where sensitivity first reaches each level, from (0, 0) to the last point."""

    false_positives_per_image: tuple[float, ...]
    sensitivity: tuple[float, ...]


@dataclass(frozen=True)
class DetectionMetrics:
    """Detection figures with their patient-level bootstrap intervals."""

    iou_threshold: float
    n_images: int
    n_lesions: int
    n_detections: int
    mean_average_precision: Estimate
    fp_rates: tuple[float, ...]
    sensitivity: tuple[Estimate, ...]  # at each of fp_rates
    mean_sensitivity: Estimate  # CPM: mean over fp_rates
    froc: FrocCurve
    hit_criterion: str = "iou"  # of the FROC figures; mAP is by IoU always
    spatial_dims: int = 2  # 3: an image is a scan, rates are FP per scan


def match_detections(
    images: Sequence[ImageDetections], iou_threshold: float = 0.5, max_detections: int = 100
) -> MatchedDetections:
    """Match every image's detections to its lesions with MONAI's ``matching_batch``."""
    # MONAI (and through it torch) is imported here, not at module level: the package stays importable without it.
    from monai.apps.detection.metrics.matching import matching_batch
    from monai.data.box_utils import box_iou

    def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(box_iou(a, b))

    raw = matching_batch(
        iou_fn=iou,
        iou_thresholds=[iou_threshold],
        pred_boxes=[im.boxes for im in images],
        pred_classes=[np.zeros(im.scores.size, dtype=int) for im in images],
        pred_scores=[im.scores for im in images],
        gt_boxes=[im.truth_boxes for im in images],
        gt_classes=[np.zeros(im.truth_boxes.shape[0], dtype=int) for im in images],
        max_detections=max_detections,
    )
    image_index, scores, hits = [], [], []
    for i, result in enumerate(raw):
        if 0 in result:
            scores.append(result[0]["dtScores"])
            hits.append(result[0]["dtMatches"][0].astype(bool))
            image_index.append(np.full(result[0]["dtScores"].size, i))
    score = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-score, kind="mergesort")  # COCOMetric's order, so that ties resolve identically
    return MatchedDetections(
        image=(np.concatenate(image_index) if image_index else np.zeros(0, dtype=int))[order],
        score=score[order],
        true_positive=(np.concatenate(hits) if hits else np.zeros(0, dtype=bool))[order],
        lesions_per_image=np.array([im.truth_boxes.shape[0] for im in images], dtype=np.float64),
        raw=tuple(raw),
    )


def centre_similarity(boxes: np.ndarray, truth_boxes: np.ndarray) -> np.ndarray:
    """(D, G) 1 - the distance of each box's centre from each lesion's centre in units of the lesion's radius (its
    box's half-extent per axis): >= 0 exactly when the centre lies within the lesion (LUNA16's hit)."""
    dims = truth_boxes.shape[1] // 2
    centres = (boxes[:, :dims] + boxes[:, dims:]) / 2
    truth_centres = (truth_boxes[:, :dims] + truth_boxes[:, dims:]) / 2
    radii = np.maximum((truth_boxes[:, dims:] - truth_boxes[:, :dims]) / 2, np.finfo(np.float64).tiny)
    offset = (centres[:, None, :] - truth_centres[None, :, :]) / radii[None, :, :]
    return np.asarray(1.0 - np.sqrt((offset**2).sum(axis=2)))


def match_centres(images: Sequence[ImageDetections], max_detections: int = 100) -> MatchedDetections:
    """Match by LUNA16's centre criterion (module docstring): hits, false positives, duplicates dropped. ``raw`` is
    empty: COCOMetric's AP needs IoU matches (:func:`match_detections`)."""
    image_index, scores, hits = [], [], []
    for i, im in enumerate(images):
        order = np.argsort(-im.scores, kind="mergesort")[:max_detections]  # MONAI's order and cut
        similarity = centre_similarity(im.boxes[order], im.truth_boxes)
        found = np.zeros(im.truth_boxes.shape[0], dtype=bool)
        for d, score in zip(range(order.size), im.scores[order]):
            inside = similarity[d] >= 0
            free = inside & ~found
            if free.any():
                found[int(np.argmax(np.where(free, similarity[d], -np.inf)))] = True
            elif inside.any():
                continue  # a duplicate of a found lesion: neither hit nor false positive
            image_index.append(i)
            scores.append(float(score))
            hits.append(bool(free.any()))
    score = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    return MatchedDetections(
        image=np.asarray(image_index, dtype=int)[order],
        score=score[order],
        true_positive=np.asarray(hits, dtype=bool)[order],
        lesions_per_image=np.array([im.truth_boxes.shape[0] for im in images], dtype=np.float64),
        raw=(),
    )


def monai_average_precision(matched: MatchedDetections, iou_threshold: float = 0.5, max_detections: int = 100) -> float:
    """AP at ``iou_threshold`` by MONAI's ``COCOMetric`` (the point estimate)."""
    from monai.apps.detection.metrics.coco import COCOMetric

    metric = COCOMetric(
        classes=["lesion"],
        iou_list=[iou_threshold],
        iou_range=(iou_threshold, iou_threshold, 0.05),
        max_detection=[max_detections],
        per_class=False,
        verbose=False,
    )
    values: dict[str, Any] = metric(list(matched.raw))[0]
    return float(values[f"AP_IoU_{iou_threshold:.2f}_MaxDet_{max_detections}"])


def _cumulative(matched: MatchedDetections, image_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    weight = image_weights[:, matched.image]
    tp = np.cumsum(weight * matched.true_positive, axis=1)
    fp = np.cumsum(weight * ~matched.true_positive, axis=1)
    return tp, fp


def _chunks(n_rows: int, n_columns: int, budget: int = 4_000_000) -> list[slice]:
    # Resamples x detections can reach 10^7+ (100 candidates on each of hundreds of images): bound the memory.
    step = max(1, budget // max(n_columns, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def weighted_average_precision(matched: MatchedDetections, image_weights: np.ndarray) -> np.ndarray:
    """COCOMetric's AP under each row of ``image_weights`` (n_resamples, n_images); NaN where no lesion weighs."""
    image_weights = np.atleast_2d(image_weights)
    out = np.full(image_weights.shape[0], np.nan)
    for rows in _chunks(image_weights.shape[0], matched.score.size):
        w = image_weights[rows]
        n_lesions = w @ matched.lesions_per_image
        if matched.score.size == 0:
            out[rows] = np.where(n_lesions > 0, 0.0, np.nan)
            continue
        tp, fp = _cumulative(matched, w)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp / n_lesions[:, None]
        precision = tp / (tp + fp + np.spacing(1))
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for r in range(w.shape[0]):
            if n_lesions[r] <= 0:
                continue
            at = np.searchsorted(recall[r], RECALL_POINTS, side="left")
            reached = at < recall.shape[1]
            out[rows.start + r] = np.where(reached, envelope[r, np.minimum(at, recall.shape[1] - 1)], 0.0).mean()
    return out


def froc_operating_points(matched: MatchedDetections, image_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FP/image and sensitivity (each (n_resamples, n_thresholds)) at each distinct score threshold, highest first."""
    tp, fp = _cumulative(matched, image_weights)
    last_of_tie = np.r_[matched.score[1:] != matched.score[:-1], True]
    n_images = image_weights.sum(axis=1, keepdims=True)
    n_lesions = (image_weights @ matched.lesions_per_image)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fp[:, last_of_tie] / n_images, tp[:, last_of_tie] / n_lesions


def weighted_froc_sensitivity(
    matched: MatchedDetections, image_weights: np.ndarray, fp_rates: Sequence[float] = FROC_RATES
) -> np.ndarray:
    """(n_resamples, len(fp_rates)) best sensitivity with FP/image <= each rate; NaN where no lesion weighs."""
    image_weights = np.atleast_2d(image_weights)
    out = np.zeros((image_weights.shape[0], len(fp_rates)))
    n_lesions = image_weights @ matched.lesions_per_image
    if matched.score.size:
        for rows in _chunks(image_weights.shape[0], matched.score.size):
            fppi, sensitivity = froc_operating_points(matched, image_weights[rows])
            for j, rate in enumerate(fp_rates):
                # Both grow with the number of detections kept, so the best point is the last within the rate.
                last = (fppi <= rate).sum(axis=1) - 1
                picked = np.take_along_axis(sensitivity, np.maximum(last, 0)[:, None], axis=1)[:, 0]
                out[rows, j] = np.where(last >= 0, picked, 0.0)
    out[n_lesions <= 0] = np.nan
    return out


def froc_curve(matched: MatchedDetections, n_images: int) -> FrocCurve:
    """The step curve's corners on the data as given (no resampling)."""
    if matched.score.size == 0:
        return FrocCurve((0.0,), (0.0,))
    fppi, sensitivity = (a[0] for a in froc_operating_points(matched, np.ones((1, n_images))))
    keep = np.r_[True, sensitivity[1:] > sensitivity[:-1]] & (sensitivity > 0)
    keep[-1] = True
    x = np.r_[0.0, fppi[keep]]
    y = np.r_[0.0, sensitivity[keep]]
    return FrocCurve(tuple(float(v) for v in x), tuple(float(v) for v in y))


def detection_metrics(
    images: Sequence[ImageDetections],
    image_weights: np.ndarray,
    n_patients: int,
    iou_threshold: float = 0.5,
    fp_rates: Sequence[float] = FROC_RATES,
    max_detections: int = 100,
    confidence: float = 0.95,
    hit_criterion: str = "iou",
) -> DetectionMetrics:
    """mAP@IoU and FROC with intervals; ``image_weights`` (n_resamples, n_images) from the patient resamples. FROC
    hits by ``hit_criterion`` (:data:`HIT_CRITERIA`): IoU >= ``iou_threshold``, or LUNA16's centre criterion."""
    if hit_criterion not in HIT_CRITERIA:
        raise ValueError(f'Argument "hit_criterion" must be one of {HIT_CRITERIA}, got {hit_criterion!r}.')
    dims = {im.spatial_dims for im in images}
    if len(dims) > 1:
        raise ValueError('Argument "images" mixes 2D images and 3D scans; evaluate each kind on its own.')
    matched = match_detections(images, iou_threshold, max_detections)
    hits = matched if hit_criterion == "iou" else match_centres(images, max_detections)
    n_lesions = int(matched.lesions_per_image.sum())
    if n_lesions == 0:
        raise ValueError("Detection figures need at least one ground-truth lesion box.")
    ones = np.ones((1, len(images)))
    ap = estimate(monai_average_precision(matched, iou_threshold, max_detections),
                  weighted_average_precision(matched, image_weights), n_lesions, n_patients, confidence)
    point = weighted_froc_sensitivity(hits, ones, fp_rates)[0]
    replicates = weighted_froc_sensitivity(hits, image_weights, fp_rates)
    sensitivity = tuple(
        estimate(point[j], replicates[:, j], n_lesions, n_patients, confidence) for j in range(len(fp_rates))
    )
    cpm = estimate(float(point.mean()), replicates.mean(axis=1), n_lesions, n_patients, confidence)
    return DetectionMetrics(
        iou_threshold=iou_threshold,
        n_images=len(images),
        n_lesions=n_lesions,
        n_detections=int(matched.score.size),
        mean_average_precision=ap,
        fp_rates=tuple(float(r) for r in fp_rates),
        sensitivity=sensitivity,
        mean_sensitivity=cpm,
        froc=froc_curve(hits, len(images)),
        hit_criterion=hit_criterion,
        spatial_dims=dims.pop() if dims else 2,
    )
