"""Detection figures: a hand-computed AP and FROC; the bootstrap's re-weighted AP equals MONAI's COCOMetric on
the resampled image list; our FROC operating points equal MONAI's ``compute_froc_curve_data``; IoU matching rules."""

from __future__ import annotations

import numpy as np
import pytest
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics.froc import compute_froc_curve_data

from pipelines.evaluation.detection import (
    ImageDetections,
    detection_metrics,
    froc_curve,
    froc_operating_points,
    match_detections,
    monai_average_precision,
    weighted_average_precision,
    weighted_froc_sensitivity,
)


def _box(x: float, y: float, size: float = 20.0) -> list[float]:
    return [x, y, x + size, y + size]


def _hand_example() -> list[ImageDetections]:
    # Image 1: lesion A found at 0.9, a false positive at 0.8. Image 2: lesion B found at 0.7.
    return [
        ImageDetections("p1", np.array([_box(10, 10)]), np.array([_box(11, 10), _box(200, 200)]), np.array([0.9, 0.8])),
        ImageDetections("p2", np.array([_box(50, 50)]), np.array([_box(50, 52)]), np.array([0.7])),
    ]


def test_ap_and_froc_equal_a_hand_computation() -> None:
    matched = match_detections(_hand_example())
    assert matched.true_positive.tolist() == [True, False, True]
    # Ranked: TP (recall 1/2, precision 1), FP (1/2, 1/2), TP (1, 2/3). Interpolated precision is 1 up to recall
    # 1/2 (51 of COCO's 101 recall points) and 2/3 above it (50 points).
    by_hand = (51 * 1.0 + 50 * 2 / 3) / 101
    assert monai_average_precision(matched) == pytest.approx(by_hand)
    assert weighted_average_precision(matched, np.ones((1, 2)))[0] == pytest.approx(by_hand)
    # Operating points (FP/image, sensitivity): (0, 1/2), (1/2, 1/2), (1/2, 1).
    sensitivity = weighted_froc_sensitivity(matched, np.ones((1, 2)), (0.125, 0.25, 0.5, 1.0))[0]
    assert sensitivity.tolist() == [0.5, 0.5, 1.0, 1.0]
    curve = froc_curve(matched, 2)
    assert curve.false_positives_per_image == (0.0, 0.0, 0.5)
    assert curve.sensitivity == (0.0, 0.5, 1.0)


def test_iou_threshold_and_duplicates() -> None:
    truth = np.array([[0.0, 0.0, 100.0, 100.0]])
    # IoU of [0,0,100,x1] with the truth is x1/100: 0.51 matches, 0.49 does not; a second hit on a matched lesion
    # is a false positive.
    for x1, expected in ((51.0, [True]), (49.0, [False])):
        matched = match_detections([ImageDetections("p", truth, np.array([[0.0, 0.0, 100.0, x1]]), np.array([0.5]))])
        assert matched.true_positive.tolist() == expected
    duplicate = match_detections([ImageDetections("p", truth, np.array([[0, 0, 100, 100], [1, 0, 100, 100]]),
                                                  np.array([0.9, 0.8]))])
    assert duplicate.true_positive.tolist() == [True, False]


def _random_images(rng: np.random.Generator, n_images: int) -> list[ImageDetections]:
    images = []
    for i in range(n_images):
        truth = np.array([_box(*rng.uniform(0, 400, 2), rng.uniform(10, 50)) for _ in range(rng.integers(0, 3))])
        boxes = [t + np.tile(rng.normal(scale=3, size=2), 2) for t in truth if rng.random() < 0.8]
        boxes += [_box(*rng.uniform(0, 400, 2), rng.uniform(10, 50)) for _ in range(rng.poisson(3))]
        scores = rng.random(len(boxes))
        images.append(ImageDetections(f"p{i // 2}", truth.reshape(-1, 4), np.array(boxes).reshape(-1, 4), scores))
    return images


def _monai_ap(images: list[ImageDetections]) -> float:
    """COCOMetric on an explicit image list, MONAI's documented recipe, without our code."""
    results = matching_batch(
        iou_fn=box_iou, iou_thresholds=[0.5],
        pred_boxes=[im.boxes for im in images], pred_classes=[np.zeros(im.scores.size, int) for im in images],
        pred_scores=[im.scores for im in images], gt_boxes=[im.truth_boxes for im in images],
        gt_classes=[np.zeros(len(im.truth_boxes), int) for im in images])
    metric = COCOMetric(classes=["lesion"], iou_list=[0.5], iou_range=(0.5, 0.5, 0.05), max_detection=[100],
                        verbose=False)
    return float(metric(results)[0]["AP_IoU_0.50_MaxDet_100"])


def test_reweighted_ap_equals_monai_on_the_resampled_image_list() -> None:
    rng = np.random.default_rng(0)
    images = _random_images(rng, 40)
    matched = match_detections(images)
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=8).astype(float)
    got = weighted_average_precision(matched, counts)
    for row, c in zip(got, counts):
        resampled = [im for im, k in zip(images, c.astype(int)) for _ in range(k)]
        assert row == pytest.approx(_monai_ap(resampled), abs=1e-12)


def test_froc_operating_points_equal_monai_froc_curve_data() -> None:
    rng = np.random.default_rng(1)
    images = _random_images(rng, 30)
    matched = match_detections(images)
    n_lesions = int(matched.lesions_per_image.sum())
    fppi, sensitivity = compute_froc_curve_data(
        matched.score[~matched.true_positive], matched.score[matched.true_positive], n_lesions, len(images))
    # MONAI lists thresholds from the second-lowest score up and ends with (0, 0); ours go from the highest down.
    ours = np.column_stack([a[0] for a in froc_operating_points(matched, np.ones((1, len(images))))])
    theirs = np.column_stack([fppi, sensitivity])[:-1][::-1]
    np.testing.assert_allclose(ours[:-1], theirs)
    # The step lookup agrees with MONAI's curve: best sensitivity with FP/image <= 1.
    within = fppi <= 1.0
    assert weighted_froc_sensitivity(matched, np.ones((1, 30)), (1.0,))[0, 0] == pytest.approx(sensitivity[within].max())


def test_detection_metrics_intervals_bracket_the_estimate_and_images_without_lesions_count() -> None:
    rng = np.random.default_rng(2)
    images = _random_images(rng, 60)
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=300).astype(float)
    weights = counts[:, [int(im.patient_id[1:]) for im in images]]
    metrics = detection_metrics(images, weights, n_patients=30)
    assert metrics.mean_average_precision.ci_low <= metrics.mean_average_precision.value
    assert metrics.mean_average_precision.value <= metrics.mean_average_precision.ci_high
    assert len(metrics.sensitivity) == 7
    values = [e.value for e in metrics.sensitivity]
    assert values == sorted(values)  # more false positives allowed never finds fewer lesions
    assert metrics.mean_sensitivity.value == pytest.approx(np.mean(values))
    assert metrics.n_lesions == sum(len(im.truth_boxes) for im in images)
    # An image without lesions counts: its false positive, scored above everything, is the first operating point,
    # so below 1 FP in 61 images nothing can be found.
    extra = [*images, ImageDetections("p0", np.zeros((0, 4)), np.array([_box(0, 0)]), np.array([1.0]))]
    sensitivity = weighted_froc_sensitivity(match_detections(extra), np.ones((1, 61)), (0.99 / 61, 1 / 61))[0]
    assert sensitivity[0] == 0.0 and sensitivity[1] > 0.0


def test_rejects_malformed_boxes() -> None:
    with pytest.raises(ValueError, match='"boxes"'):
        ImageDetections("p", np.zeros((0, 4)), np.array([[10, 10, 5, 20]]), np.array([0.5]))
    with pytest.raises(ValueError, match='"scores"'):
        ImageDetections("p", np.zeros((0, 4)), np.array([[0, 0, 5, 5]]), np.array([0.5, 0.4]))
