"""The evaluation end to end on a synthetic cohort: report.json (no figure without its interval), report.md, and
plots whose drawn data are the report's numbers; input validation; the runtime budget for CI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from monai.apps.detection.metrics import matching  # noqa: F401  (imported before timing: MONAI's import takes ~10 s)
from PIL import Image

from pipelines.evaluation import (
    EvaluationConfig,
    EvaluationReport,
    ImageDetections,
    LesionClassification,
    evaluate,
    report_json,
    report_markdown,
    write_report,
)
from pipelines.evaluation.plots import (
    auc_figure,
    confusion_figure,
    froc_figure,
    reliability_figure,
    report_figures,
    roc_figure,
)

CLASSES = ("benign", "intermediate", "malignant")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic_cohort(seed: int, n_patients: int) -> tuple[LesionClassification, list[ImageDetections]]:
    """Patients with 1-3 lesions whose true class probabilities are known (the oracle); four prediction sets of
    decreasing noise (an ablation); two images per patient with lesion boxes and scored detections."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, n_patients)
    patients = np.repeat([f"P{i:03d}" for i in range(n_patients)], sizes)
    latent = 1.5 * rng.normal(size=(patients.size, 3)) + np.repeat(rng.normal(size=(n_patients, 3)), sizes, axis=0)
    oracle = _softmax(latent)
    labels = (oracle.cumsum(axis=1) < rng.random((patients.size, 1))).sum(axis=1)
    noise = {"image": 2.0, "image+labs": 1.5, "image+notes": 1.7, "all": 1.0}
    sets = {name: _softmax(latent + rng.normal(scale=s, size=latent.shape)) for name, s in noise.items()}
    images = []
    for p in range(n_patients):
        for _ in range(2):
            corners = rng.uniform(0, 400, (rng.integers(0, 3), 2))
            truth = np.hstack([corners, corners + rng.uniform(15, 60, (len(corners), 1))])
            found = [t + np.tile(rng.normal(scale=2, size=2), 2) for t in truth if rng.random() < 0.85]
            fp_corners = rng.uniform(0, 400, (rng.poisson(8), 2))
            boxes = np.vstack([*found, np.hstack([fp_corners, fp_corners + 30])]).reshape(-1, 4)
            scores = np.r_[rng.beta(5, 2, len(found)), rng.beta(1.2, 5, len(fp_corners))]
            images.append(ImageDetections(f"P{p:03d}", truth, boxes, scores))
    return LesionClassification(CLASSES, labels, tuple(patients), sets, oracle), images


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvaluationReport, dict[str, Any], Path, float]:
    lesions, images = synthetic_cohort(seed=11, n_patients=150)
    start = time.perf_counter()
    report = evaluate(lesions, images, comparisons=[("all", "image"), ("image+labs", "image")],
                      config=EvaluationConfig(n_resamples=1000, seed=3))
    seconds = time.perf_counter() - start
    out = tmp_path_factory.mktemp("evaluation")
    write_report(report, out)
    return report, json.loads((out / "report.json").read_text()), out, seconds


def test_a_thousand_resamples_on_about_300_lesions_take_seconds(
        evaluated: tuple[EvaluationReport, dict[str, Any], Path, float]) -> None:
    report, _, _, seconds = evaluated
    assert 250 <= report.n_lesions <= 350 and report.detection is not None
    # Five prediction sets with two paired comparisons and 300 images' detections, 1000 resamples each.
    assert seconds < 15, f"evaluation took {seconds:.1f} s"


def _figures(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        here = [(path, node)] if "value" in node else []
        return here + [f for key, value in node.items() for f in _figures(value, f"{path}.{key}")]
    if isinstance(node, list):
        return [f for i, value in enumerate(node) for f in _figures(value, f"{path}[{i}]")]
    return []


def test_every_figure_in_report_json_has_its_interval(
        evaluated: tuple[EvaluationReport, dict[str, Any], Path, float]) -> None:
    _, data, _, _ = evaluated
    figures = _figures(data)
    assert len(figures) > 100
    for path, figure in figures:
        assert figure["ci_low"] is not None and figure["ci_high"] is not None, path
        assert figure["ci_low"] <= figure["value"] <= figure["ci_high"] or "ece" in path, path
        assert figure["n"] > 0 and figure["n_resamples"] == 1000, path
    per_set = data["classification"]["sets"]["all"]
    scalar_keys = {k for k, v in per_set.items() if isinstance(v, dict) and "value" in v}
    assert scalar_keys == {"macro_auc", "accuracy", "macro_precision", "macro_recall", "macro_f1", "ece"}
    assert set(per_set["per_class"]["malignant"]) == {"auc", "precision", "recall", "f1"}
    assert data["classification"]["oracle"]["macro_auc"]["value"] > per_set["macro_auc"]["value"]
    macro = [c for c in data["classification"]["comparisons"] if c["class"] == "macro" and c["b"] == "image"]
    assert [c["a"] for c in macro] == ["all", "image+labs"]
    assert all(0 <= c["delong"]["p_value"] <= 1 for c in macro)
    assert len(data["detection"]["froc"]["sensitivity"]) == 7


def test_report_md_has_the_reviewers_tables(evaluated: tuple[EvaluationReport, dict[str, Any], Path, float]) -> None:
    report, _, out, _ = evaluated
    md = (out / "report.md").read_text()
    assert md == report_markdown(report)
    for m in report.models:
        assert f"| {m.name} | {m.macro_auc.text()} |" in md
    assert report.oracle is not None and f"| oracle (true class probabilities) | {report.oracle.macro_auc.text()} |" in md
    assert report.detection is not None
    assert f"| mAP@0.5 | {report.detection.mean_average_precision.text()} |" in md
    assert "| all | image | macro |" in md and "DeLong" in md and "95% percentile intervals from 1000" in md


def test_plots_draw_the_reports_numbers(evaluated: tuple[EvaluationReport, dict[str, Any], Path, float]) -> None:
    report, data, _, _ = evaluated
    for m in [*report.models, report.oracle]:
        assert m is not None
        stored = data["classification"]["oracle" if m is report.oracle else "sets"]
        stored = stored if m is report.oracle else stored[m.name]
        ax = roc_figure(m.name, stored).axes[0]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        for line, name in zip(ax.get_lines(), CLASSES):
            np.testing.assert_allclose(line.get_xdata(), stored["roc"][name]["false_positive_rate"])
            np.testing.assert_allclose(line.get_ydata(), stored["roc"][name]["true_positive_rate"])
            assert f"{name}: AUC {m.auc[name].text()}" in legend  # the same wording as report.md's tables
        ax = confusion_figure(m.name, stored).axes[0]
        np.testing.assert_array_equal(ax.images[0].get_array(), stored["confusion_matrix"]["counts"])
        ax = reliability_figure(m.name, stored).axes[0]
        rel = stored["reliability"]
        accuracy = [a for a, c in zip(rel["accuracy"], rel["count"]) if c > 0]
        confidence = [m for m, c in zip(rel["confidence"], rel["count"]) if c > 0]
        bars, gaps = ax.containers
        np.testing.assert_allclose([bar.get_height() for bar in bars], accuracy)
        np.testing.assert_allclose([gap.get_y() + gap.get_height() for gap in gaps], confidence)
        assert f"ECE {stored['ece']['value']:.3f}" in ax.get_title()
    ax = froc_figure(data["detection"]).axes[0]
    curve = data["detection"]["froc_curve"]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), curve["fp_per_image"])
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), curve["sensitivity"])
    points = ax.containers[0].lines[0]
    np.testing.assert_allclose(points.get_xdata(), data["detection"]["froc"]["fp_per_image"])
    np.testing.assert_allclose(points.get_ydata(), [s["value"] for s in data["detection"]["froc"]["sensitivity"]])
    points = auc_figure(data["classification"]).axes[0].containers[0].lines[0]
    sets = data["classification"]["sets"]
    np.testing.assert_allclose(points.get_xdata(), [*(s["macro_auc"]["value"] for s in sets.values()),
                                                    data["classification"]["oracle"]["macro_auc"]["value"]])
    names = [name for name, _ in report_figures(data)]
    assert len(names) == 3 * 5 + 2 and names[-2:] == ["macro_auc.png", "froc.png"]


def test_png_files_exist_and_are_not_blank(evaluated: tuple[EvaluationReport, dict[str, Any], Path, float]) -> None:
    _, _, out, _ = evaluated
    names = sorted(p.name for p in out.glob("*.png"))
    assert "froc.png" in names and "macro_auc.png" in names and "roc_image+labs.png" in names
    assert len(names) == 3 * 5 + 2
    for name in names:
        path = out / name
        assert path.stat().st_size > 10_000, name
        pixels = np.asarray(Image.open(path).convert("L"))
        assert pixels.shape[0] > 300 and pixels.std() > 10, name


def test_ablation_sets_are_evaluated_alike_and_paired() -> None:
    lesions, _ = synthetic_cohort(seed=5, n_patients=60)
    same = {"image": lesions.predictions["image"], "copy": lesions.predictions["image"].copy()}
    twin = LesionClassification(CLASSES, lesions.labels, lesions.patient_ids, same)
    report = evaluate(twin, comparisons=[("copy", "image")], config=EvaluationConfig(n_resamples=200))
    a, b = report.models
    assert report_json(report)["classification"]["sets"]["copy"] == report_json(report)["classification"]["sets"]["image"]
    for row in report.comparisons:  # paired resamples: identical sets differ by exactly 0 in every resample
        assert (row.difference.value, row.difference.ci_low, row.difference.ci_high) == (0.0, 0.0, 0.0)
        assert row.delong.p_value == 1.0
    assert report.detection is None and "## Detection" not in report_markdown(report)


def test_inputs_are_validated_with_the_arguments_named() -> None:
    lesions, _ = synthetic_cohort(seed=6, n_patients=20)
    p = lesions.predictions["all"]
    with pytest.raises(ValueError, match="no lesion of class \\['malignant'\\]"):
        LesionClassification(CLASSES, np.minimum(lesions.labels, 1), lesions.patient_ids, {"all": p})
    with pytest.raises(ValueError, match='"predictions\\["all"\\]" must have shape'):
        LesionClassification(CLASSES, lesions.labels, lesions.patient_ids, {"all": p[:, :2]})
    with pytest.raises(ValueError, match='"patient_ids"'):
        LesionClassification(CLASSES, lesions.labels, lesions.patient_ids[1:], {"all": p})
    with pytest.raises(ValueError, match='"comparisons".*fusion'):
        evaluate(lesions, comparisons=[("fusion", "all")], config=EvaluationConfig(n_resamples=10))
    with pytest.raises(ValueError, match='must not name a set "oracle"'):
        LesionClassification(CLASSES, lesions.labels, lesions.patient_ids, {"oracle": p}, oracle=p)
    with pytest.raises(ValueError, match='"n_resamples"'):
        EvaluationConfig(n_resamples=0)
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate()
