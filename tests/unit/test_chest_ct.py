"""The synthetic chest CT cohort: labels and oracle, phantom HU, DICOM series, FHIR bundles, 3D datalist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from devtools.synthetic.chest_ct import LAB_MODELS, LABELS, PRIOR, SMALL_GRID, generate_case, posterior
from devtools.synthetic.chest_ct_io import write_chest_ct_cohort
from pipelines.common.datalist import load_datalist
from pipelines.common.volume import load_volume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chest_ct_cohort(tmp_path_factory.mktemp("chest"), 4, seed=5, split=(0.5, 0.25, 0.25),
                                 grid=SMALL_GRID)


def test_datalist_loads_as_3d_items_with_oracle_and_fhir(cohort: Path) -> None:
    datalist = load_datalist(cohort)
    assert datalist.box_mode == "xyzxyz" and datalist.classes == LABELS and datalist.has_oracle
    items = [item for name in ("training", "validation", "test") for item in datalist.splits[name]]
    assert [len(datalist.splits[n]) for n in ("training", "validation", "test")] == [2, 1, 1]
    for item in items:
        assert item.image.is_dir() and len(list(item.image.glob("*.dcm"))) == SMALL_GRID.n_slices
        np.testing.assert_allclose(item.oracle.sum(axis=1) if item.oracle is not None else [], 1.0, atol=1e-5)
        clinical = item.clinical()  # parses the bundle with fhir.resources
        assert set(clinical.labs) <= {lab.loinc for lab in LAB_MODELS}
        assert all(clinical.units[code] == "ng/mL" for code in clinical.labs)


def test_fhir_bundle_validates_and_carries_sex_and_birth_date(cohort: Path) -> None:
    from fhir.resources.R4B.bundle import Bundle

    bundle = Bundle.model_validate_json(next(cohort.parent.glob("*.fhir.json")).read_text())
    resources: list[Any] = [entry.resource for entry in bundle.entry or []]
    kinds = [resource.get_resource_type() for resource in resources]
    assert kinds[0] == "Patient" and "Observation" in kinds
    patient = resources[0]
    assert patient.gender in ("male", "female") and patient.birthDate is not None


def test_series_is_ct_with_geometry_and_nodules_are_where_the_boxes_say(cohort: Path) -> None:
    datalist = load_datalist(cohort)
    item = next(i for name in ("training", "validation", "test") for i in datalist.splits[name] if len(i.boxes))
    ds = pydicom.dcmread(next(item.image.glob("*.dcm")))
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.BodyPartExamined == "CHEST"
    assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, -1024, "HU")
    assert ds.FrameOfReferenceUID and len(ds.ImagePositionPatient) == 3 and ds.SliceThickness == 2.5
    if shutil.which("dciodvfy"):
        from dicom_validation import dciodvfy, errors

        assert errors(dciodvfy(next(item.image.glob("*.dcm")))) == []
    volume = load_volume([item.image])
    hu = volume.array()
    lung = hu[(hu > -950) & (hu < -750)]
    assert lung.size > 0.05 * hu.size and -900 < float(np.median(lung)) < -800  # aerated lung near -860 HU
    for box in item.boxes:
        centre = (box[:3] + box[3:]) / 2
        i, j, k = np.rint(volume.patient_to_index(centre)[0]).astype(int)
        patch = hu[k, j - 1:j + 2, i - 1:i + 2]
        assert float(patch.mean()) > -760  # a nodule (ground glass or solid) is denser than lung


def test_labels_and_oracle_follow_the_generative_model() -> None:
    cases = [generate_case(11, index, SMALL_GRID) for index in range(300)]
    labels = np.asarray([case.label for case in cases])
    assert abs(np.mean(labels == 2) - PRIOR[2]) < 0.1
    nodules = [(case.label, n) for case in cases for n in case.nodules]
    kinds = {n.kind for _, n in nodules}
    assert kinds == {"ground-glass", "part-solid", "solid"}
    solid = np.asarray([n.solid_fraction for _, n in nodules])
    evidence = np.asarray([n.evidence for _, n in nodules])
    assert np.corrcoef(evidence, solid)[0, 1] > 0.8  # the solid component carries the latent
    by_class = [np.mean([n.solid_fraction for y, n in nodules if y == c]) for c in range(3)]
    assert by_class[0] < by_class[1] < by_class[2]
    case = next(c for c in cases if c.nodules and c.labs and c.note)
    np.testing.assert_allclose([n.oracle for n in case.nodules],
                               posterior([n.evidence for n in case.nodules], case.labs, case.note))
    np.testing.assert_allclose(posterior([0.3], {}, None, use=()), [PRIOR])
    # The oracle beats chance by a margin: its top class is right more often than the prior's guess.
    top = np.asarray([np.argmax(n.oracle) for _, n in nodules])
    truth = np.asarray([y for y, _ in nodules])
    assert np.mean(top == truth) > max(PRIOR) + 0.1


def test_same_seed_writes_the_same_files(tmp_path: Path, cohort: Path) -> None:
    again = write_chest_ct_cohort(tmp_path, 4, seed=5, split=(0.5, 0.25, 0.25), grid=SMALL_GRID)
    assert json.loads(again.read_text())["training"] == json.loads(cohort.read_text())["training"]
    first = sorted((cohort.parent / "SCT00500001").glob("*.dcm"))[10]
    assert first.read_bytes() == (tmp_path / "SCT00500001" / first.name).read_bytes()
