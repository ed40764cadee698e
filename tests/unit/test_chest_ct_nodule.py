"""chest-ct-nodule: both detector configurations build, the 3D fusion head reads age and sex, the shipped bundle
finds a phantom's nodule through the inference API and the pipeline, non-chest and non-volume input is left out
with its reason, and a tiny training run writes a bundle the registry accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from devtools.synthetic.chest_ct import SMALL_GRID, ChestCase, generate_case
from devtools.synthetic.chest_ct_io import write_case, write_chest_ct_cohort
from pipelines.base import ClinicalContext, InstanceRef, LabValue, StudyInput
from pipelines.common import fuse
from pipelines.common.datalist import Clinical, load_datalist
from pipelines.common.volume import load_volume
from pipelines.chest_ct_nodule import inference
from pipelines.chest_ct_nodule.networks import CPU_SMALL, LUNA16, build_detector, build_network
from pipelines.chest_ct_nodule.pipeline import ChestCtNodulePipeline
from pipelines.chest_ct_nodule.spec import BUNDLES_DIR, CHEST_CT_NODULE

SHIPPED = BUNDLES_DIR / CHEST_CT_NODULE


def _case_with_nodule() -> ChestCase:
    """The first case of seed 11 on the small grid whose largest nodule is at least 20 mm across (the shipped
    cpu-small model finds large nodules; see its card for the sensitivity by size)."""
    for index in range(50):
        case = generate_case(11, index, SMALL_GRID, min_nodules=1)
        if max(n.diameter_mm for n in case.nodules) >= 20.0:
            return case
    raise AssertionError("no case with a nodule of 20 mm in 50")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[ChestCase, Path]:
    case = _case_with_nodule()
    folder, _ = write_case(case, tmp_path_factory.mktemp("ct"))
    return case, folder


@pytest.fixture(scope="module")
def pipeline() -> ChestCtNodulePipeline:
    return ChestCtNodulePipeline(bundle_dir=SHIPPED, device="cpu")


def _study(paths: list[Path], age: float | None = 64.0, sex: str | None = "F") -> StudyInput:
    refs = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs.append(InstanceRef(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                                str(ds.Modality)))
    return StudyInput(str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), tuple(refs), age, sex)


def _inside(point: tuple[float, float, float], box: np.ndarray) -> bool:
    return bool(np.all(np.asarray(point) >= box[:3]) and np.all(np.asarray(point) <= box[3:]))


def test_both_detector_configurations_build_and_give_per_anchor_outputs() -> None:
    torch.manual_seed(0)
    small = build_detector(build_network(CPU_SMALL), CPU_SMALL)
    small.train()
    losses = small(torch.rand(1, 1, 32, 32, 32), [{"boxes": torch.tensor([[8.0, 8.0, 8.0, 16.0, 16.0, 16.0]]),
                                                   "labels": torch.zeros(1, dtype=torch.long)}])
    assert set(losses) == {"classification", "box_regression"} and all(torch.isfinite(v) for v in losses.values())
    small.eval()
    with torch.inference_mode():
        found = small(torch.rand(1, 1, 32, 32, 32), use_inferer=False)[0]
    assert found["boxes"].shape[1] == 6 and len(found["labels_scores"]) == len(found["boxes"])

    # MONAI's LUNA16 bundle: ResNet50, conv1 stride (2, 2, 1), 3 anchors per location on 3 levels.
    luna = build_network(LUNA16).eval()
    assert LUNA16.base_anchor_shapes == ((6, 8, 4), (8, 6, 5), (10, 10, 6))
    assert sum(p.numel() for p in luna.parameters()) > 20_000_000
    with torch.inference_mode():
        heads = luna(torch.rand(1, 1, 32, 32, 16))
    # stride 4 in x, y and 2 in z at the first returned layer (conv1 (2, 2, 1), then max pooling), then x2 per level
    assert [tuple(t.shape) for t in heads["classification"]] == [(1, 3, 8, 8, 8), (1, 3, 4, 4, 4), (1, 3, 2, 2, 2)]
    assert heads["box_regression"][0].shape[1] == 3 * 6
    assert build_detector(luna, LUNA16).inferer is not None  # sliding windows of [512, 512, 192]


def test_3d_fusion_head_reads_age_and_sex_with_missing_flags() -> None:
    torch.manual_seed(0)
    cfg = fuse.FusionConfig(crop_size=8, lab_loincs=("2039-6",), lab_norm={"2039-6": (1.0, 0.5)}, spatial_dims=3,
                            demographics=True)
    model = fuse.LesionClassifier(cfg).eval()
    crops = np.random.default_rng(0).random((2, 8, 8, 8)).astype(np.float32)
    inputs = fuse.prepare_inputs(cfg, crops, [{}, {}], [None, None], None, ages=[40.0, None], sexes=["M", "O"])
    assert inputs.demographics is not None
    assert inputs.demographics[1, 2:].tolist() == [1.0, 1.0]  # age and an "O" sex are missing, flagged
    older = fuse.prepare_inputs(cfg, crops, [{}, {}], [None, None], None, ages=[85.0, None], sexes=["M", "O"])
    p, q = fuse.classify(model, inputs, torch.device("cpu")), fuse.classify(model, older, torch.device("cpu"))
    assert p.shape == (2, 3) and np.allclose(p.sum(axis=1), 1.0)
    assert not np.allclose(p[0], q[0]) and np.allclose(p[1], q[1])  # age is read; the missing one stays missing


def test_inference_api_finds_the_phantom_nodule(phantom: tuple[ChestCase, Path]) -> None:
    case, folder = phantom
    loaded = inference.load_ct_bundle(SHIPPED, "cpu")
    assert loaded.classes == ("AIS", "MIA", "IAC")
    volume = load_volume([folder])
    mv = inference.model_volume(loaded, volume)
    assert np.allclose(mv.image.GetSpacing(), loaded.detector_config.spacing_mm)
    boxes, scores = inference.detect(loaded, volume)
    candidates, all_scores = inference.detect(loaded, volume, all_candidates=True)
    assert len(candidates) >= len(boxes) and np.all(np.diff(all_scores) <= 0)
    largest = max(case.nodules, key=lambda n: n.diameter_mm)
    hits = [b for b in boxes if _inside(largest.centre, b)]
    assert hits, f"no box at the operating threshold contains the {largest.diameter_mm:.0f} mm nodule"
    centre = (hits[0][:3] + hits[0][3:]) / 2
    assert np.linalg.norm(centre - np.asarray(largest.centre)) < largest.diameter_mm / 2 + 4.0
    clinical = Clinical(labs=dict(case.labs), units={k: "ng/mL" for k in case.labs}, notes=(case.note or "",))
    probs = inference.classify(loaded, volume, boxes, clinical, float(case.age_years), case.sex)
    image_only = inference.classify(loaded, volume, boxes, clinical, float(case.age_years), case.sex,
                                    withheld=frozenset({"labs", "notes"}))
    assert probs.shape == image_only.shape == (len(boxes), 3)
    assert np.allclose(probs.sum(axis=1), 1.0) and np.allclose(image_only.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="withhold"):
        inference.classify(loaded, volume, boxes, clinical, None, None, withheld=frozenset({"image"}))


def test_pipeline_findings_carry_the_volume_box_and_the_slice_through_its_centre(
        phantom: tuple[ChestCase, Path], pipeline: ChestCtNodulePipeline) -> None:
    case, folder = phantom
    paths = sorted(folder.glob("*.dcm"))
    context = ClinicalContext("ok", {k: LabValue(k, v, "ng/mL", "2025-01-01") for k, v in case.labs.items()},
                              (case.note,) if case.note else ())
    result = pipeline.run(_study(paths), context)
    assert not result.instances_excluded and len(result.images_analysed) == len(paths)
    assert result.findings, "no finding on a phantom with a nodule of 20 mm or more"
    centres = [n.centre for n in case.nodules]
    hit = [f for f in result.findings if f.volume_box is not None and any(
        _inside(c, np.asarray([f.volume_box.x0, f.volume_box.y0, f.volume_box.z0, f.volume_box.x1, f.volume_box.y1,
                               f.volume_box.z1])) for c in centres)]
    assert hit
    finding = hit[0]
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    assert finding.sop_instance_uid in by_uid and finding.frame_number == 1
    ds = pydicom.dcmread(by_uid[finding.sop_instance_uid], stop_before_pixels=True)
    # the slice lies within half a slice of the box centre, and the pixel box is where the nodule is on it
    assert finding.volume_box is not None
    assert abs(float(ds.ImagePositionPatient[2]) - finding.volume_box.centre[2]) <= SMALL_GRID.slice_mm / 2 + 1e-6
    spacing = float(ds.PixelSpacing[0])
    column = (finding.volume_box.centre[0] - float(ds.ImagePositionPatient[0])) / spacing
    row = (finding.volume_box.centre[1] - float(ds.ImagePositionPatient[1])) / spacing
    assert finding.box.x0 <= column <= finding.box.x1 and finding.box.y0 <= row <= finding.box.y1
    assert 0 <= finding.box.x0 < finding.box.x1 <= ds.Columns - 1
    assert set(finding.class_probabilities) == {c.meaning for c in pipeline.classes}
    assert "notes" in finding.inputs_used or case.note is None


def test_head_ct_and_a_non_chest_series_are_left_out_with_the_reason(
        phantom: tuple[ChestCase, Path], pipeline: ChestCtNodulePipeline, tmp_path: Path) -> None:
    found = get_testdata_file("CT_small.dcm")  # one CT slice of a head, Body Part Examined absent
    assert isinstance(found, str)
    head = Path(found)
    result = pipeline.run(_study([head]), ClinicalContext.unavailable("unreachable"))
    assert not result.findings and not result.images_analysed and result.detection_threshold is None
    (excluded,) = result.instances_excluded
    assert excluded.reason == "series-unusable" and excluded.detail.startswith("too-few-slices")

    _, folder = phantom
    paths = []
    for path in sorted(folder.glob("*.dcm"))[:20]:
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "HEAD"
        ds.save_as(tmp_path / path.name)
        paths.append(tmp_path / path.name)
    result = pipeline.run(_study(paths), ClinicalContext.unavailable("unreachable"))
    assert not result.findings and len(result.instances_excluded) == 20
    assert {e.reason for e in result.instances_excluded} == {"outside-intended-use"}
    assert "Body Part Examined HEAD" in result.instances_excluded[0].detail


def stacked_series(source: Path, folder: Path, n: int = 40, spacing_mm: float = 2.5) -> list[Path]:
    """A real CT slice repeated along z as an axial series (one new series, a new SOP Instance UID per slice)."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = pydicom.dcmread(source)
    src.decompress()
    series, paths = generate_uid(), []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        ds = src.copy()
        ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = generate_uid(), series, k + 1
        ds.ImagePositionPatient = [float(v) for v in src.ImagePositionPatient[:2]] + [k * spacing_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = spacing_mm
        if "BodyPartExamined" in ds:
            del ds.BodyPartExamined  # nothing in the header says "not chest": the pixels must
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
        paths.append(folder / f"{k:03d}.dcm")
    return paths


def test_a_real_head_ct_series_without_body_part_is_not_analysed_no_lung_fields(
        pipeline: ChestCtNodulePipeline, phantom: tuple[ChestCase, Path], tmp_path: Path) -> None:
    from pipelines.chest_ct_nodule.lungs import MIN_LUNG_FIELD_FRACTION, lung_field_fraction

    found = get_testdata_file("J2K_pixelrep_mismatch.dcm")  # a real head CT slice, 512 x 512, JPEG 2000
    assert isinstance(found, str)
    paths = stacked_series(Path(found), tmp_path / "head")
    result = pipeline.run(_study(paths), ClinicalContext.unavailable("unreachable"))
    assert not result.findings and not result.images_analysed and result.detection_threshold is None
    assert len(result.instances_excluded) == len(paths)
    assert {e.reason for e in result.instances_excluded} == {"out-of-distribution"}
    assert result.instances_excluded[0].detail.startswith("no lung fields")
    # the chest phantom is far above the gate, the head far below
    _, folder = phantom
    chest = inference.model_volume(pipeline.bundle, load_volume(sorted(folder.glob("*.dcm")))).array()
    head = inference.model_volume(pipeline.bundle, load_volume(paths)).array()
    assert lung_field_fraction(chest) > 1.5 * MIN_LUNG_FIELD_FRACTION > 3 * lung_field_fraction(head)


def test_tiny_training_run_writes_a_bundle_the_registry_accepts(tmp_path: Path) -> None:
    from pipelines.registry import validate_bundle

    torch.set_num_threads(1)
    datalist = write_chest_ct_cohort(tmp_path / "data", 3, 5, split=(0.5, 0.5, 0.0), grid=SMALL_GRID)
    from pipelines.chest_ct_nodule.train import train_from_datalist

    report = train_from_datalist(load_datalist(datalist), tmp_path / "bundle", epochs_detector=1,
                                 epochs_classifier=1, device="cpu", seed=1)
    bundle, words = validate_bundle(tmp_path / "bundle")
    assert bundle.implementation == CHEST_CT_NODULE and bundle.requirements.dimensionality == 3
    assert "classifier" in words
    assert (tmp_path / "bundle" / "train" / "cache").is_dir()
    lines = (tmp_path / "bundle" / "train" / "metrics.jsonl").read_text().splitlines()
    assert [line.count('"stage": "detector"') for line in lines] == [1, 0]
    card = (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert "8140/3" in card and "NOS" in card and report.n_train_patients == 2
