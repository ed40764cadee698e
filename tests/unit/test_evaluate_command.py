"""``dicom-ai-node evaluate`` with the shipped bundle on a small held-out synthetic datalist: the headline figures
printed and written with their intervals, report.md, plots drawn from report.json's numbers, exit 2 with the fix
for inputs it cannot use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datalist_cohort import write_synthetic_datalist
from matplotlib.container import ErrorbarContainer
from PIL import Image
from typer.testing import CliRunner

from devtools.synthetic.cohort import Case
from node.cli import app
from pipelines.evaluation.plots import estimate_from_json, report_figures

runner = CliRunner()
BUNDLE = Path(__file__).resolve().parents[2] / "pipelines" / "bundles" / "radiograph-lesion"
HELD_OUT = range(2060, 2072)  # not in the bundle's training (patients 0-479 of seed 0); every class has >= 6 lesions


def _oracle_stand_in(case: Case, labels: np.ndarray) -> np.ndarray:
    # Today's generator does not state its class probabilities: a stand-in (the truth, smoothed) checks the plumbing.
    return np.full((labels.size, 3), 0.1) + 0.7 * np.eye(3)[labels]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("evaluate")
    datalist = write_synthetic_datalist(root / "site", {"test": HELD_OUT}, oracle=_oracle_stand_in)
    out = root / "report"
    result = runner.invoke(app, ["evaluate", "radiograph-lesion", "--datalist", str(datalist), "--out", str(out),
                                 "--resamples", "200", "--allow-few-resamples", "--seed", "1", "--threads", "1",
                                 "--device", "cpu", "--ablation", f"image={BUNDLE}"])
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "report.json").read_text()), out


def _text(figure: dict[str, Any]) -> str:
    return estimate_from_json(figure).text()


def test_prints_and_writes_the_headline_figures_with_their_intervals(
        evaluated: tuple[Any, dict[str, Any], Path]) -> None:
    result, data, out = evaluated
    classification, detection = data["classification"], data["detection"]
    sets = classification["sets"]
    headline = {
        "detection mAP@0.5": detection["map"],
        "macro AUC, all": sets["all"]["macro_auc"],
        "macro AUC, image": sets["image"]["macro_auc"],
        "macro AUC, oracle": classification["oracle"]["macro_auc"],
        "ECE, all": sets["all"]["ece"],
        **{f"sensitivity at {r:g} FP/image": s for r, s in zip(detection["froc"]["fp_per_image"],
                                                                detection["froc"]["sensitivity"])},
    }
    printed = " ".join(result.output.split())
    for name, figure in headline.items():
        assert figure["n_resamples"] == 200 and figure["n_patients"] == len(HELD_OUT), name
        assert figure["ci_low"] is not None and figure["ci_high"] is not None, name
        if name != "ECE, all":  # ECE is biased upwards on a resample, so its point may lie outside
            assert figure["ci_low"] <= figure["value"] <= figure["ci_high"], name
        assert f"{name} │ {_text(figure)}" in printed, name
    (fusion_vs_image,) = [c for c in classification["comparisons"]
                          if (c["a"], c["b"], c["class"]) == ("all", "image", "macro")]
    assert 0 <= fusion_vs_image["delong"]["p_value"] <= 1
    assert "DeLong p, all vs image" in printed
    assert data["config"]["n_resamples"] == 200 and data["config"]["seed"] == 1
    assert data["provenance"]["resamples_below_minimum"] is True
    assert data["provenance"]["datalist"] == {"path": str(out.parent / "site" / "datalist.json"),
                                              "name": "synthetic-0", "split": "test", "images": len(HELD_OUT)}
    assert list(sets) == ["image", "image+labs", "image+notes", "all", "image (as trained)"]


def test_an_as_trained_bundle_given_the_same_inputs_matches_the_withheld_row(
        evaluated: tuple[Any, dict[str, Any], Path]) -> None:
    _, data, _ = evaluated
    sets = data["classification"]["sets"]
    # The shipped bundle named as the image-only bundle: same model, same inputs, same resamples -> same figures.
    assert sets["image (as trained)"] == sets["image"]
    assert sets["all"] != sets["image"]


def test_report_md_states_the_figures_and_that_it_is_exploratory(evaluated: tuple[Any, dict[str, Any], Path]) -> None:
    _, data, out = evaluated
    md = (out / "report.md").read_text()
    sets = data["classification"]["sets"]
    assert "**Exploratory: only 200 bootstrap resamples" in md
    assert f"| all | {_text(sets['all']['macro_auc'])} |" in md
    assert f"| image | {_text(sets['image']['macro_auc'])} |" in md
    assert f"| oracle (true class probabilities) | {_text(data['classification']['oracle']['macro_auc'])} |" in md
    assert f"| mAP@0.5 | {_text(data['detection']['map'])} |" in md
    assert "| all | image | macro |" in md and "radiograph-lesion" in md


def test_plots_exist_and_draw_report_json_numbers(evaluated: tuple[Any, dict[str, Any], Path]) -> None:
    _, data, out = evaluated
    classification = data["classification"]
    figures = dict(report_figures(data))
    assert sorted(figures) == sorted(p.name for p in out.glob("*.png"))
    for name, stored in [*classification["sets"].items(), ("oracle", classification["oracle"])]:
        slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)  # "image (as trained)" -> roc_image_as_trained_.png
        ax = figures[f"roc_{slug}.png"].axes[0]
        for line, cls in zip(ax.get_lines(), classification["class_names"]):
            np.testing.assert_array_equal(line.get_xdata(), stored["roc"][cls]["false_positive_rate"])
            np.testing.assert_array_equal(line.get_ydata(), stored["roc"][cls]["true_positive_rate"])
        assert _text(stored["macro_auc"]) in ax.get_title()
        ax = figures[f"confusion_{slug}.png"].axes[0]
        np.testing.assert_array_equal(ax.images[0].get_array(), stored["confusion_matrix"]["counts"])
        bars, gaps = figures[f"reliability_{slug}.png"].axes[0].containers
        rel = stored["reliability"]
        filled = [i for i, n in enumerate(rel["count"]) if n > 0]
        np.testing.assert_allclose([b.get_x() for b in bars], [rel["bin_edges"][i] for i in filled])
        np.testing.assert_allclose([b.get_height() for b in bars], [rel["accuracy"][i] for i in filled])
        np.testing.assert_allclose([g.get_y() + g.get_height() for g in gaps], [rel["confidence"][i] for i in filled])
    ax = figures["froc.png"].axes[0]
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), data["detection"]["froc_curve"]["fp_per_image"])
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), data["detection"]["froc_curve"]["sensitivity"])
    froc_points = ax.containers[0]
    assert isinstance(froc_points, ErrorbarContainer)
    np.testing.assert_array_equal(froc_points.lines[0].get_xdata(), data["detection"]["froc"]["fp_per_image"])
    np.testing.assert_array_equal(froc_points.lines[0].get_ydata(),
                                  [s["value"] for s in data["detection"]["froc"]["sensitivity"]])
    auc_points = figures["macro_auc.png"].axes[0].containers[0]
    assert isinstance(auc_points, ErrorbarContainer)
    np.testing.assert_array_equal(auc_points.lines[0].get_xdata(), [s["macro_auc"]["value"] for s in
                                                       [*classification["sets"].values(), classification["oracle"]]])
    for path in out.glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("L"))
        assert path.stat().st_size > 10_000 and pixels.shape[0] > 300 and pixels.std() > 10, path.name


def _exit_2(args: list[str], *needles: str) -> None:
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def test_inputs_it_cannot_use_exit_2_naming_the_fix(tmp_path: Path) -> None:
    benign_only = write_synthetic_datalist(tmp_path / "benign", {"test": [2, 5, 7]})  # seed 0: benign lesions only
    good = ["--out", str(tmp_path / "out")]
    _exit_2(["no-such-pipeline", "--datalist", str(benign_only), *good], "'no-such-pipeline'", "radiograph-lesion")
    _exit_2(["radiograph-lesion", "--datalist", str(tmp_path / "absent.json"), *good], "no such datalist file")
    _exit_2(["radiograph-lesion", "--datalist", str(benign_only), *good],
            "no lesion of class ['intermediate', 'malignant']", "every class")
    _exit_2(["radiograph-lesion", "--datalist", str(benign_only), "--split", "validation", *good],
            "'validation' list is empty")
    _exit_2(["radiograph-lesion", "--datalist", str(benign_only), "--resamples", "200", *good],
            "--allow-few-resamples")
    _exit_2(["radiograph-lesion", "--datalist", str(benign_only), "--ablation", "image", *good], "NAME=DIR")
    _exit_2(["radiograph-lesion", "--datalist", str(benign_only), "--ablation", f"notes={BUNDLE}", *good],
            "image, image+labs, image+notes, all")
    assert not (tmp_path / "out").exists()
