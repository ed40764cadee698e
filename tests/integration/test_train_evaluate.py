"""Train and evaluate as a researcher does, with the commands the README gives, on the CPU:

* the shipped ``radiograph-lesion`` bundle evaluated on the held-out list of the cohort it was trained on (re-made
  with ``python -m devtools.synthetic --only test``): every headline figure with its 95% CI, detection not perfect,
  fusion better than image only by DeLong's test, the oracle beside the model;
* a small cohort written to disk, ``dicom-ai-node train --datalist`` and ``dicom-ai-node evaluate`` on its test
  list: the whole loop a site runs on its own data, in minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.cli_evaluate import headline_rows
from pipelines.common.bundle_layout import CARD, read_config
from pipelines.registry import installed_bundle

from peers import TOOL_ENV

pytestmark = pytest.mark.integration


def _run(*args: str, timeout: int = 600) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=TOOL_ENV, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _with_ci(figure: dict[str, Any], n_resamples: int = 1000) -> float:
    """The point value of a figure that carries its 95% CI from ``n_resamples`` patient-level resamples."""
    assert figure["n_resamples"] == n_resamples and figure["confidence"] == 0.95
    assert figure["ci_low"] is not None and figure["ci_high"] is not None
    assert figure["ci_low"] <= figure["value"] <= figure["ci_high"]
    return float(figure["value"])


def _fusion_vs_image(report: dict[str, Any]) -> dict[str, Any]:
    (comparison,) = [c for c in report["classification"]["comparisons"]
                     if (c["a"], c["b"], c["class"]) == ("all", "image", "macro")]
    return comparison


def test_the_shipped_bundle_on_its_held_out_list_reports_every_figure_with_its_ci(tmp_path: Path) -> None:
    bundle = installed_bundle("radiograph-lesion")
    training = read_config(bundle.path)["training"]
    # the model card's recipe: the cohort of seed 0, 1000 patients, written as a datalist and split 0.6/0.2/0.2
    assert training["datalist"] == "synthetic-bone-seed0", "the shipped bundle was trained on another cohort"
    cohort = tmp_path / "cohort"
    _run("-m", "devtools.synthetic", str(cohort), "--n-patients", "1000", "--seed", "0", "--only", "test", "--quiet")
    out = tmp_path / "evaluation"
    printed = _run("-m", "node.cli", "evaluate", "radiograph-lesion", "--datalist", str(cohort / "datalist.json"),
                   "--out", str(out), "--threads", "2")
    report = json.loads((out / "report.json").read_text())
    detection, classification = report["detection"], report["classification"]
    sets = classification["sets"]

    # detection is not trivially perfect: the interval of mAP@0.5 stays below 1
    assert _with_ci(detection["map"]) > 0.3 and detection["map"]["ci_high"] < 1.0
    for sensitivity in detection["froc"]["sensitivity"]:
        _with_ci(sensitivity)
    # fusion beats image only, by DeLong's test on the same lesions (patients as clusters)
    fused, image = _with_ci(sets["all"]["macro_auc"]), _with_ci(sets["image"]["macro_auc"])
    comparison = _fusion_vs_image(report)
    assert fused > image and comparison["delong"]["p_value"] < 0.05
    # the oracle (true class probabilities) is the ceiling beside the model; calibration with its interval
    assert _with_ci(classification["oracle"]["macro_auc"]) >= fused - 0.05
    _with_ci(sets["all"]["ece"])
    for name in ("image", "image+labs", "image+notes", "all"):
        _with_ci(sets[name]["macro_auc"])
    # printed, with the intervals, and the plots written
    assert "mAP@0.5" in printed and "DeLong" in printed and "oracle" in printed.lower() and "95% CI" in printed
    for png in ("froc.png", "roc_all.png", "roc_image.png", "confusion_all.png", "reliability_all.png"):
        assert (out / png).stat().st_size > 5000, png
    # the model card's figures are these: a fresh clone reproduces them (the "as trained" ablation rows came from
    # bundles trained with fewer inputs, which are not shipped; the card gives their commands)
    recorded = read_config(bundle.path)["metrics"]["evaluation"]
    card = (bundle.path / CARD).read_text()
    assert all(f"| {name} | {value} |" in card for name, value in recorded["rows"])
    shipped = [row for row in recorded["rows"] if "(as trained)" not in row[0]]
    assert shipped == [list(row) for row in headline_rows(report)]


def test_a_small_cohort_trains_and_evaluates_on_the_cpu(tmp_path: Path) -> None:
    cohort, bundle, out = tmp_path / "cohort", tmp_path / "bundle", tmp_path / "evaluation"
    # seed 14: its test list holds lesions of every class (9 benign, 4 intermediate, 9 malignant), as evaluate needs
    _run("-m", "devtools.synthetic", str(cohort), "--n-patients", "48", "--seed", "14", "--split", "0.5", "0.2", "0.3",
         "--quiet")
    _run("-m", "node.cli", "train", "radiograph-lesion", "--datalist", str(cohort / "datalist.json"), "--out",
         str(bundle), "--name", "small-bone", "--version", "0.0.1", "--epochs-detector", "4", "--epochs-classifier",
         "6", "--fusion", "joint", "--lab-encoding", "text", "--device", "cpu", "--threads", "2")
    log = [json.loads(line) for line in (bundle / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["stage"] == "detector"] == [1, 2, 3, 4]
    _run("-m", "node.cli", "evaluate", str(bundle), "--datalist", str(cohort / "datalist.json"), "--out", str(out),
         "--threads", "2", "--record")
    report = json.loads((out / "report.json").read_text())
    _with_ci(report["detection"]["map"])
    for name in ("image", "all"):
        _with_ci(report["classification"]["sets"][name]["macro_auc"])
    _with_ci(report["classification"]["oracle"]["macro_auc"])
    assert 0 <= _fusion_vs_image(report)["delong"]["p_value"] <= 1
    assert (out / "report.md").read_text().count("95% CI") >= 5
    # --record put the headline figures, with their intervals, into the bundle's metadata and model card
    rows = read_config(bundle)["metrics"]["evaluation"]["rows"]
    assert rows == [list(row) for row in headline_rows(report)] and "CI" in rows[0][1]
    assert f"| {rows[0][0]} | {rows[0][1]} |" in (bundle / CARD).read_text()
