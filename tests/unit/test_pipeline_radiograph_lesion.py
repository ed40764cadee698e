"""The radiograph-lesion pipeline with its shipped bundle: demo study, a real CR, missing EHR, and a tiny retrain."""

from __future__ import annotations

import base64
import math
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom import dcmread

from pipelines.base import ClinicalContext, InstanceRef, LabValue, Pipeline, PipelineResult, StudyInput
from pipelines.cohort import DemoCase, write_demo_study
from pipelines.registry import available_pipelines, load_pipeline, pipeline_requirements
from pipelines.specs import BUNDLES_DIR

NAME = "radiograph-lesion"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return load_pipeline(NAME, device="cpu")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoCase:
    return write_demo_study(tmp_path_factory.mktemp("demo"), seed=7)


def _study(paths: list[Path]) -> StudyInput:
    refs = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        refs.append(InstanceRef(path, str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                                str(ds.Modality)))
    return StudyInput(study_instance_uid=str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID),
                      instances=tuple(refs))


def _context(bundle: dict) -> ClinicalContext:  # type: ignore[type-arg]
    labs, notes = {}, []
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "Observation":
            code = r["code"]["coding"][0]["code"]
            q = r["valueQuantity"]
            labs[code] = LabValue(code, float(q["value"]), q["code"], r["effectiveDateTime"])
        elif r["resourceType"] == "DocumentReference":
            notes.append(base64.b64decode(r["content"][0]["attachment"]["data"]).decode())
    return ClinicalContext("ok", labs=labs, notes=tuple(notes))


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy


def test_registry() -> None:
    assert NAME in available_pipelines()
    assert pipeline_requirements(NAME).modalities == ("CR", "DX")
    with pytest.raises(KeyError, match=NAME):
        pipeline_requirements("no-such-pipeline")
    code = "import sys; from pipelines.registry import pipeline_requirements as r; r('radiograph-lesion'); " \
           "assert 'torch' not in sys.modules and 'monai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_shipped_bundle_loads(pipeline: Pipeline) -> None:
    bundle_dir = BUNDLES_DIR / NAME
    assert {"weights.pt", "config.json", "MODEL_CARD.md"} <= {p.name for p in bundle_dir.iterdir()}
    assert sum(p.stat().st_size for p in bundle_dir.iterdir()) < 8 * 1024 * 1024
    assert pipeline.name == NAME and pipeline.version
    assert pipeline.requirements.reads_notes and pipeline.requirements.dimensionality == 2
    assert load_pipeline(NAME, device="cpu") is pipeline  # cached per process


def test_demo_study_yields_findings(pipeline: Pipeline, demo: DemoCase) -> None:
    context = _context(demo.fhir_bundle)
    result = pipeline.run(_study(demo.files), context)
    assert isinstance(result, PipelineResult)
    assert len(result.images_analysed) == 2 and result.fhir_status == "ok" and result.device == "cpu"
    assert result.findings, "the demo study must yield at least one finding"
    truth = [box for box, _ in demo.truth]
    assert any(_overlap((f.box.x0, f.box.y0, f.box.x1, f.box.y1), t) > 0 for f in result.findings for t in truth)
    for f in result.findings:
        assert math.isclose(sum(f.class_probabilities.values()), 1.0, abs_tol=1e-4)
        assert f.probability == max(f.class_probabilities.values())
        assert f.detection_score >= result.detection_threshold
        assert f.tracking_uid.startswith("2.25.") and f.tracking_id.startswith("lesion ")
        assert "image" in f.inputs_used
    assert len({f.tracking_uid for f in result.findings}) == len(result.findings)
    again = pipeline.run(_study(demo.files), context)
    assert [f.tracking_uid for f in again.findings] == [f.tracking_uid for f in result.findings]
    assert [f.class_probabilities for f in again.findings] == [f.class_probabilities for f in result.findings]


def test_ehr_unreachable_is_reported(pipeline: Pipeline, demo: DemoCase) -> None:
    result = pipeline.run(_study(demo.files), ClinicalContext.unavailable("unreachable"))
    assert result.inputs_missing == ("labs", "notes")
    assert result.fhir_status == "unreachable"
    for f in result.findings:
        assert f.inputs_used == ("image",) and f.inputs_missing == ("labs", "notes")


def test_real_cr_runs(pipeline: Pipeline) -> None:
    found = get_testdata_file("RG3_UNCR.dcm")  # bundled in pydicom-data (a test dependency): no download
    assert found is not None, "pydicom-data lacks RG3_UNCR.dcm"
    path = Path(found)
    result = pipeline.run(_study([path]), ClinicalContext.unavailable("patient-not-found"))
    assert result.images_analysed == (str(dcmread(path, stop_before_pixels=True).SOPInstanceUID),)
    for f in result.findings:
        assert 0 <= f.box.x0 <= f.box.x1 <= 1759 and 0 <= f.box.y0 <= f.box.y1 <= 1759


def test_an_undecodable_image_is_left_out_and_the_rest_analysed(pipeline: Pipeline, demo: DemoCase,
                                                               tmp_path: Path) -> None:
    from node_fakes import j2k_cr

    garbled = j2k_cr("demo-damaged", 1, "garbled")
    path = tmp_path / "garbled.dcm"
    garbled.save_as(path, enforce_file_format=True)
    result = pipeline.run(_study([*demo.files, path]), ClinicalContext.unavailable("unreachable"))
    assert len(result.images_analysed) == 2 and str(garbled.SOPInstanceUID) not in result.images_analysed
    (excluded,) = result.instances_excluded
    assert (excluded.sop_instance_uid, excluded.reason) == (str(garbled.SOPInstanceUID), "undecodable")
    assert "J2K" in excluded.detail
    assert all(f.sop_instance_uid != excluded.sop_instance_uid for f in result.findings)


def test_tiny_training_run_writes_loadable_bundle(tmp_path: Path) -> None:
    from pipelines.radiograph_lesion import RadiographLesionPipeline
    from pipelines.train import train_radiograph_lesion

    report = train_radiograph_lesion(tmp_path, n_patients=6, seed=1, epochs_detector=1, epochs_classifier=1,
                                     device="cpu")
    assert report.n_train_patients + report.n_val_patients == 6
    loaded = RadiographLesionPipeline(bundle_dir=tmp_path, device="cpu")
    assert loaded.threshold == report.detection_threshold
    assert "NOT for clinical use" in (tmp_path / "MODEL_CARD.md").read_text()
