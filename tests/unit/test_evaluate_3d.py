"""``evaluate`` on 3D datalists: LUNA16 centre hits, FROC/CPM by hand, the oracle's AUC, intervals, report files and
``--record``, on a SMALL_GRID chest CT cohort with a stand-in for the pipeline's inference module (nothing trained)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread
from pydicom.dataset import Dataset
from sklearn.metrics import roc_auc_score

from devtools.synthetic.chest_ct import LAB_MODELS, LABELS, SMALL_GRID, generate_case
from devtools.synthetic.chest_ct_io import write_chest_ct_cohort
from pipelines.common.datalist import Clinical, Datalist, load_datalist
from pipelines.common.demographics import age_years, patient_sex
from pipelines.common.volume import Volume
from pipelines.evaluation import EvaluationConfig, FROC_RATES, ImageDetections, write_report
from pipelines.evaluation.bootstrap import patient_resamples
from pipelines.evaluation.detection import detection_metrics, match_centres
from pipelines.evaluation.run import EvaluationInputError, evaluate_bundle

SEED, N_PATIENTS = 10, 7  # seed 10: each class in 2+ patients (DeLong needs it), and one scan without nodules
FAR_AWAY = np.array([400.0, 400.0, 400.0, 410.0, 410.0, 410.0])  # outside the phantom: no nodule near it
CONFIG = EvaluationConfig(n_resamples=1000, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Datalist:
    out = tmp_path_factory.mktemp("chest-ct")
    return load_datalist(write_chest_ct_cohort(out, N_PATIENTS, SEED, split=(0, 0, 1), grid=SMALL_GRID))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The metadata a chest-ct-nodule bundle declares (the stand-in inference module needs no weights)."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "configs").mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("# chest-ct-nodule (test bundle)\n")
    metadata = {
        "name": "chest-ct-nodule", "pipeline": "chest-ct-nodule", "version": "0.0.1-test",
        "intended_images": {"modalities": ["CT"], "body_parts": ["CHEST"]},
        "inputs": {"dimensionality": 3, "labs": [{"loinc": lab.loinc, "name": lab.display, "unit": lab.unit}
                                                 for lab in LAB_MODELS], "notes": {"reads": True}},
        "classes": [{"value": f"T{i}", "scheme_designator": "99TEST", "meaning": name, "label": name}
                    for i, name in enumerate(LABELS)],
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (root / "configs" / "inference.json").write_text(json.dumps({"detection_threshold": 0.5}))
    return root


@dataclass
class FakeInference:
    """Stands in for ``pipelines.chest_ct_nodule.inference``: detect returns the true boxes of the scan (score
    ``hit_score``) plus the given false positives; classify returns the oracle with everything given, less
    informative probabilities with inputs withheld, and records what it was given."""

    datalist: Datalist
    hit_score: float = 1.0
    false_positives: dict[str, list[float]] = field(default_factory=dict)  # patient -> FP scores
    given: list[tuple[str, float | None, str | None, frozenset[str], Clinical]] = field(default_factory=list)

    def _item(self, volume: Volume) -> Any:
        folder = volume.stack.slices[0].path.parent.resolve()
        return next(it for it in self.datalist.split("test") if it.image.resolve() == folder)

    def load_ct_bundle(self, bundle_dir: Path, device: str = "auto") -> Any:
        return SimpleNamespace(config={"detection_threshold": 0.5}, classes=LABELS, device="cpu")

    def detect(self, loaded: Any, volume: Volume, all_candidates: bool = False) -> tuple[np.ndarray, np.ndarray]:
        assert all_candidates
        item = self._item(volume)
        fps = self.false_positives.get(item.patient_id, [])
        boxes = np.concatenate([item.boxes, np.tile(FAR_AWAY, (len(fps), 1))]).reshape(-1, 6)
        return boxes, np.array([self.hit_score] * len(item.boxes) + fps)

    def classify(self, loaded: Any, volume: Volume, boxes_lps: np.ndarray, clinical: Clinical,
                 age_years: float | None, sex: str | None, withheld: frozenset[str] = frozenset()) -> np.ndarray:
        item = self._item(volume)
        np.testing.assert_array_equal(boxes_lps, item.boxes)  # the true boxes, not the detections
        self.given.append((item.patient_id, age_years, sex, withheld, clinical))
        assert item.oracle is not None
        flat = np.full_like(item.oracle, 1.0 / len(LABELS))
        return item.oracle if not withheld else 0.5 * item.oracle + 0.5 * flat


def _evaluate(bundle_dir: Path, cohort: Datalist, fake: FakeInference) -> Any:
    return evaluate_bundle(bundle_dir, cohort, "test", CONFIG, volume_inference=fake)


@pytest.fixture(scope="module")
def perfect(bundle_dir: Path, cohort: Datalist) -> tuple[FakeInference, Any]:
    """The stand-in with a perfect detector and what it was given, and the evaluation (run once: volumes load)."""
    fake = FakeInference(cohort)
    return fake, _evaluate(bundle_dir, cohort, fake)


def _figures(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        here = [node] if "ci_method" in node else []  # the bootstrap estimates (report.py schema)
        return here + [f for value in node.values() for f in _figures(value)]
    if isinstance(node, list):
        return [f for value in node for f in _figures(value)]
    return []


def test_perfect_detector_finds_every_nodule_at_every_rate(perfect: tuple[FakeInference, Any],
                                                             cohort: Datalist) -> None:
    detection = perfect[1].report.detection
    assert detection.hit_criterion == "centre" and detection.spatial_dims == 3
    assert detection.n_images == N_PATIENTS and detection.n_lesions == sum(len(it.boxes) for it in cohort.split("test"))
    assert [(e.value, e.ci_low, e.ci_high) for e in detection.sensitivity] == [(1.0, 1.0, 1.0)] * len(FROC_RATES)
    assert detection.mean_sensitivity.value == 1.0
    assert detection.mean_average_precision.value == pytest.approx(1.0)


def test_false_positives_move_the_froc_points_as_computed_by_hand(bundle_dir: Path, cohort: Datalist) -> None:
    # The scan without nodules gets a false positive scored above every hit (0.9 > 0.5), every scan one below (0.2):
    # threshold 0.9: 1 FP / 7 scans, no nodule found; 0.5: 1/7 FP per scan, all found; 0.2: 8/7 FP per scan.
    empty = next(it.patient_id for it in cohort.split("test") if not it.labels.size)
    fps = {it.patient_id: [0.2] for it in cohort.split("test")}
    fps[empty] = [0.9, 0.2]
    fake = FakeInference(cohort, hit_score=0.5, false_positives=fps)
    # An ablation bundle trained on images alone gets the image row's inputs (the stand-in answers alike for both).
    report = evaluate_bundle(bundle_dir, cohort, "test", CONFIG, {"image": bundle_dir}, volume_inference=fake).report
    rows = {m.name: m for m in report.models}
    assert rows["image (as trained)"].macro_auc.value == rows["image"].macro_auc.value
    assert {w for *_, w, _ in fake.given} == {frozenset({"labs", "notes"}), frozenset({"notes"}), frozenset({"labs"}),
                                               frozenset()}
    detection = report.detection
    assert detection is not None
    assert [e.value for e in detection.sensitivity] == [0.0, 1, 1, 1, 1, 1, 1]  # 1/8 FP/scan < 1/7: nothing found
    assert detection.mean_sensitivity.value == pytest.approx(6 / 7)
    assert detection.froc.false_positives_per_image == pytest.approx((0.0, 1 / 7, 8 / 7))
    assert detection.froc.sensitivity == (0.0, 1.0, 1.0)


def test_centre_criterion_counts_a_small_box_at_the_centre_and_merges_duplicates() -> None:
    nodule = np.array([[0.0, 0.0, 0.0, 10.0, 10.0, 10.0]])
    tiny = [4.5, 4.5, 4.5, 5.5, 5.5, 5.5]  # centre on the nodule's, IoU 0.001: a LUNA16 hit, not an IoU hit
    edge = [8.0, 8.0, 3.0, 12.0, 12.0, 7.0]  # centre (10, 10, 5): 1.41 radii away, outside
    scan = ImageDetections("P1", nodule, np.array([tiny, tiny, edge]), np.array([0.9, 0.8, 0.7]), spatial_dims=3)
    matched = match_centres([scan])
    assert matched.true_positive.tolist() == [True, False]  # the duplicate at 0.8 is neither hit nor FP
    assert matched.score.tolist() == [0.9, 0.7]
    weights = patient_resamples(["P1"], 10, np.random.default_rng(0)).weights(["P1"])
    centre = detection_metrics([scan], weights, 1, iou_threshold=0.1, hit_criterion="centre")
    iou = detection_metrics([scan], weights, 1, iou_threshold=0.1, hit_criterion="iou")
    assert centre.sensitivity[3].value == 1.0 and iou.sensitivity[-1].value == 0.0
    assert centre.mean_average_precision.value == iou.mean_average_precision.value == 0.0


def test_oracle_auc_equals_sklearn_and_every_interval_is_ordered(perfect: tuple[FakeInference, Any],
                                                                   cohort: Datalist, tmp_path: Path) -> None:
    fake, result = perfect
    items = [it for it in cohort.split("test") if it.labels.size]
    labels = np.concatenate([it.labels for it in items])
    oracle = np.concatenate([it.oracle for it in items])
    assert result.report.oracle.macro_auc.value == pytest.approx(roc_auc_score(labels, oracle, multi_class="ovr"))
    assert result.report.n_lesions == labels.size
    assert {m.name for m in result.report.models} == {"image", "image+labs", "image+notes", "all"}
    assert any(c.a == "all" and c.b == "image" and c.class_name == "macro" for c in result.report.comparisons)

    files = write_report(result.report, tmp_path, result.provenance)
    data = json.loads(files.json.read_text())
    figures = _figures(data)
    assert len(figures) > 50
    for figure in figures:
        if figure["value"] is not None:
            assert figure["ci_low"] <= figure["value"] + 1e-12 <= figure["ci_high"] + 2e-12, figure
    assert data["config"]["hit_criterion"] == "centre" and data["config"]["iou_threshold"] == 0.1
    assert data["detection"]["unit"] == "scan"
    markdown = files.markdown.read_text()
    assert "LUNA16's centre criterion" in markdown and "sensitivity at 0.125 FP/scan" in markdown
    assert (tmp_path / "froc.png") in files.plots
    for plot in files.plots:
        assert imread(plot).shape[0] > 100

    # Age and sex from the series header, the labs in the bundle's units, the rows' inputs withheld.
    cases = {generate_case(SEED, i, SMALL_GRID).patient_id: generate_case(SEED, i, SMALL_GRID) for i in range(N_PATIENTS)}
    for patient, age, sex, withheld, clinical in fake.given:
        case = cases[patient]  # the header's Patient's Age (and birth date) say exactly age_years
        assert (age, sex) == (case.age_years, case.sex)
        assert set(clinical.labs) <= {lab.loinc for lab in LAB_MODELS}
    assert sum(w == frozenset() for *_, w, _ in fake.given) == len(items)  # the "all" row: one call per scan


def test_a_2d_datalist_for_a_3d_bundle_is_refused_with_the_fix(bundle_dir: Path, cohort: Datalist) -> None:
    flat = Datalist(cohort.path, cohort.classes, "xyxy", cohort.splits)
    with pytest.raises(EvaluationInputError, match="box_mode 'xyxy'.*reads 3D inputs.*'xyzxyz'"):
        evaluate_bundle(bundle_dir, flat, "test", CONFIG, volume_inference=FakeInference(cohort))


def test_record_stores_the_figures_and_renders_the_pipelines_card(perfect: tuple[FakeInference, Any],
                                                                  bundle_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import pipelines.registry
    from node.cli_evaluate import headline_rows
    from pipelines.common.bundle_layout import CARD, read_config
    from pipelines.evaluation.record import RecordError, record_evaluation

    result = perfect[1]
    data = json.loads(write_report(result.report, tmp_path / "report", result.provenance).json.read_text())
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bundle)
    with pytest.raises(RecordError, match="register it"):  # chest-ct-nodule may not be registered where this runs
        monkeypatch.setattr(pipelines.registry, "IMPLEMENTATIONS", {})
        record_evaluation(bundle, data, headline_rows(data))

    def card(config: dict[str, Any]) -> str:
        return "\n".join(f"{name}: {value}" for name, value in config["metrics"]["evaluation"]["rows"])

    monkeypatch.setattr(pipelines.registry, "implementation_module",
                        lambda implementation, part: SimpleNamespace(model_card=card))
    rows = headline_rows(data)
    record_evaluation(bundle, data, rows)
    stored = read_config(bundle)["metrics"]["evaluation"]
    assert stored["unit"] == "scan" and stored["n_images"] == N_PATIENTS and stored["split"] == "test"
    assert ["sensitivity at 1 FP/scan", result.report.detection.sensitivity[3].text()] in stored["rows"]
    assert any(name.startswith("CPM") for name, _ in rows)
    assert "macro AUC, oracle" in (bundle / CARD).read_text()


def test_age_and_sex_come_from_the_header() -> None:
    ds = Dataset()
    ds.PatientAge, ds.PatientSex = "065Y", "F"
    assert (age_years(ds), patient_sex(ds)) == (65.0, "F")
    ds.PatientAge = "006M"
    assert age_years(ds) == 0.5
    ds = Dataset()
    ds.PatientBirthDate, ds.StudyDate, ds.PatientSex = "19600701", "20250630", "O"
    assert (age_years(ds), patient_sex(ds)) == (64.0, None)
    assert age_years(Dataset()) is None
