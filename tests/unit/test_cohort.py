"""The synthetic cohort as a user checks it: the same seed gives the same files; the written datalist loads and
points at files that exist; each oracle row is what the README's model gives for the observed data; each modality
adds information; the DICOM headers are in the model's intended use and MONOCHROME1 is stored inverted."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from devtools.synthetic import evidence
from devtools.synthetic.__main__ import main
from devtools.synthetic.cohort import (
    BODY_PARTS,
    LABELS,
    generate_case,
    oracle_probabilities,
    patient_truth,
    write_cohort,
    write_demo_study,
)
from devtools.synthetic.cohort_io import case_datasets
from pipelines.common.datalist import load_datalist
from pipelines.common.imaging import normalise
from pipelines.common.intended_use import header_problem
from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION_INTENDED_USE


def _independent_oracle(z: float, labs: dict[str, float], note: str | None) -> np.ndarray:
    """The README's model written out as products of probabilities (no logs, no shared code path)."""
    q = evidence.NOTE_TRUE_POOL_PROBABILITY
    p = np.array(evidence.PRIOR, dtype=np.float64)
    for y in range(3):
        p[y] *= norm.pdf(z, evidence.IMAGE_MEANS[y], evidence.IMAGE_SD)
        for lab in evidence.LAB_MODELS:
            if lab.loinc in labs:
                half = 0.5 * 10.0**-lab.decimals
                v = labs[lab.loinc]
                dist = norm(np.log(lab.medians[y]), lab.log_sds[y])
                p[y] *= dist.cdf(np.log(v + half)) - (dist.cdf(np.log(v - half)) if v - half > 0 else 0.0)
        for pool, sentences in enumerate(evidence.NOTE_SENTENCES.values()):
            for sentence in sentences:
                if note and sentence in note:
                    p[y] *= q if pool == y else (1 - q) / 2
    return p / p.sum()


def test_same_seed_same_everything(tmp_path: Path) -> None:
    a, b = generate_case(5, 9), generate_case(5, 9)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes and a.labs == b.labs and a.note == b.note
    assert a.images[0].oracle == b.images[0].oracle
    assert not np.array_equal(a.image, generate_case(6, 9).image)
    first, second = write_demo_study(tmp_path / "a"), write_demo_study(tmp_path / "b")
    assert [p.name for p in first.files] == [p.name for p in second.files]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first.files, second.files))
    assert first.fhir_bundle == second.fhir_bundle
    one, two = write_cohort(tmp_path / "c1", 3, seed=4), write_cohort(tmp_path / "c2", 3, seed=4)
    assert one.read_text() == two.read_text()
    assert sorted(p.name for p in (tmp_path / "c1").rglob("*")) == sorted(p.name for p in (tmp_path / "c2").rglob("*"))


def test_truth_without_pixels_is_the_rendered_cases_truth() -> None:
    for index in range(4):
        case, truth = generate_case(2, index, n_images=2), patient_truth(2, index, n_images=2)
        assert (case.labs, case.note, case.label) == (truth.labs, truth.note, truth.label)
        assert tuple(im.evidence for im in case.images) == truth.evidence
        assert [len(im.boxes) for im in case.images] == [len(e) for e in truth.evidence]
        rows = [row for im in case.images for row in im.oracle]
        assert np.allclose(rows, oracle_probabilities(truth)) and np.allclose(rows, oracle_probabilities(case))
        assert all(label == case.label for label in case.labels)


def test_written_datalist_loads_and_matches_the_cases(tmp_path: Path) -> None:
    assert main([str(tmp_path), "--n-patients", "10", "--seed", "3", "--quiet"]) == 0
    datalist = load_datalist(tmp_path / "datalist.json")  # checks every image and FHIR path exists
    assert datalist.classes == LABELS and datalist.box_mode == "xyxy" and datalist.has_oracle
    items = [item for split in ("training", "validation", "test") for item in datalist.split(split)]
    assert {len(datalist.split(s)) > 0 for s in ("training", "validation", "test")} == {True}
    patients_of = {s: {item.patient_id for item in datalist.split(s)} for s in ("training", "validation", "test")}
    assert sum(len(p) for p in patients_of.values()) == len(set().union(*patients_of.values())) == 10  # by patient
    assert [len(p) for p in patients_of.values()] == [6, 2, 2]
    for item in items:
        assert item.image.is_file() and item.fhir is not None and item.fhir.is_file()
        ds = dcmread(item.image)
        index = int(item.patient_id.rsplit("-", 1)[1]) - 1
        case = generate_case(3, index)
        image = case.images[int(ds.InstanceNumber) - 1]
        assert ds.PatientID == item.patient_id == case.demographics.patient_id
        assert np.allclose(item.boxes, np.asarray(image.boxes).reshape(-1, 4), atol=1e-3)
        assert [LABELS[i] for i in item.labels] == list(image.labels)
        assert item.oracle is not None and item.oracle.shape == (len(image.boxes), 3)
        clinical = item.clinical()
        assert dict(clinical.labs) == case.labs and clinical.note == case.note
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--n-patients", "4", "--split", "0.5", "0.5", "0.5"])


def test_oracle_rows_sum_to_one_and_match_an_independent_recomputation(tmp_path: Path) -> None:
    datalist = load_datalist(write_cohort(tmp_path, 12, seed=8))
    n_rows = 0
    for split in ("training", "validation", "test"):
        for item in datalist.split(split):
            assert item.oracle is not None
            case = generate_case(8, int(item.patient_id.rsplit("-", 1)[1]) - 1)
            clinical = item.clinical()  # what a reader of the FHIR bundle sees, not the generator's memory
            latents = case.images[int(dcmread(item.image).InstanceNumber) - 1].evidence
            for row, z in zip(item.oracle, latents):
                assert row.sum() == pytest.approx(1.0, abs=1e-5)
                assert np.allclose(row, _independent_oracle(z, dict(clinical.labs), clinical.note), atol=2e-6)
                n_rows += 1
    assert n_rows >= 10


def test_each_modality_adds_information_and_none_alone_suffices() -> None:
    labels, sets = [], {name: [] for name in ("image", "labs", "notes", "image+labs", "image+notes", "labs+notes",
                                              "all")}
    for index in range(260):
        truth = patient_truth(21, index)
        labels += [LABELS.index(truth.label)] * len(truth.lesion_evidence)
        for name in sets:
            use = ("image", "labs", "notes") if name == "all" else tuple(name.split("+"))
            sets[name].append(oracle_probabilities(truth, use))
    y = np.asarray(labels)
    assert y.size >= 300
    auc = {name: float(np.mean([roc_auc_score(y == c, np.concatenate(rows)[:, c]) for c in range(3)]))
           for name, rows in sets.items()}
    assert auc["all"] > 0.85, auc
    for name in ("image", "labs", "notes"):  # none alone comes near the combined oracle
        assert auc[name] < auc["all"] - 0.06, auc
        assert auc[name] > 0.6, auc  # and each carries information
    for pair in ("image+labs", "image+notes", "labs+notes"):  # the third modality still adds
        assert auc[pair] < auc["all"] - 0.01, auc
    assert auc["image"] > max(auc["labs"], auc["notes"]), auc


def test_headers_are_in_intended_use_and_monochrome1_is_inverted() -> None:
    seen_parts, seen_photometric = set(), set()
    for index in range(12):
        case = generate_case(13, index)
        for ds, image in zip(case_datasets(case), case.images):
            assert header_problem(ds, RADIOGRAPH_LESION_INTENDED_USE) is None
            assert ds.BodyPartExamined in RADIOGRAPH_LESION_INTENDED_USE.body_parts
            spacing = float(ds.PixelSpacing[0])
            assert 0.12 <= spacing <= 0.35 and float(ds.ImagerPixelSpacing[0]) == spacing
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == image.window
            seen_parts.add(ds.BodyPartExamined)
            seen_photometric.add(ds.PhotometricInterpretation)
            x0, y0, x1, y1 = (int(v) for v in image.marker_box)
            marker_stored = ds.pixel_array[y0:y1, x0:x1]
            fx0, fy0, fx1, fy1 = image.field
            in_field = ds.pixel_array[fy0:fy1, fx0:fx1]
            # The lead L/R marker is white on screen: after the display chain (window, inversion for MONOCHROME1).
            assert normalise(ds)[y0:y1, x0:x1].max() == pytest.approx(1.0)
            if ds.PhotometricInterpretation == "MONOCHROME1":
                assert marker_stored.min() < np.percentile(in_field, 1)  # stored dark, shown bright
            else:
                assert marker_stored.max() > np.percentile(in_field, 99)
    assert seen_photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len(seen_parts) >= 4 and seen_parts <= set(BODY_PARTS)


def test_demo_dicom_reads_back(tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path)
    assert len(demo.files) == 2
    for number, path in enumerate(demo.files, start=1):
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ComputedRadiographyImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CR" and ds.PhotometricInterpretation in {"MONOCHROME1", "MONOCHROME2"}
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        assert ds.PatientID == demo.patient_id and ds.PatientID.startswith("SYN-")
        assert ds.StudyInstanceUID == demo.study_instance_uid
        assert str(ds.StudyInstanceUID).startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
        assert ds.InstanceNumber == number and ds.SeriesNumber == 1
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "AccessionNumber", "SeriesInstanceUID", "ReferringPhysicianName", "StudyID",
                        "PixelSpacing", "ImagerPixelSpacing", "Manufacturer", "SeriesDescription",
                        "WindowCenter", "WindowWidth", "BodyPartExamined", "Laterality", "ViewPosition"):
            assert keyword in ds, keyword
        image = demo.case.images[number - 1]
        assert np.array_equal(ds.pixel_array, image.pixels) and ds.pixel_array.shape == (512, 512)
        # each image carries a lesion at least 9 mm across (the clearly visible kind the demo shows findings on)
        assert image.boxes and max((x1 - x0) * image.pixel_spacing_mm for x0, _, x1, _ in image.boxes) >= 9.0
        assert all(0 <= x0 < x1 <= 511 and 0 <= y0 < y1 <= 511 for x0, y0, x1, y1 in image.boxes)


def test_fhir_bundle_structure(tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path)
    bundle = demo.fhir_bundle
    assert json.loads(json.dumps(bundle)) == bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    resources = [e["resource"] for e in bundle["entry"]]
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    patient_url = bundle["entry"][0]["fullUrl"]
    patient = resources[0]
    assert patient["resourceType"] == "Patient"
    assert patient["identifier"] == [{"system": "urn:dicom-ai-node:synthetic-mrn", "value": demo.patient_id}]
    assert patient["gender"] in {"male", "female"} and len(patient["birthDate"]) == 10
    study_date = dcmread(demo.files[0]).StudyDate
    iso_study = f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}"
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    units = {lab.loinc: lab.unit for lab in evidence.LAB_MODELS}
    for obs in observations:
        assert obs["status"] == "final"
        assert obs["category"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
        assert obs["category"][0]["coding"][0]["code"] == "laboratory"
        assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
        loinc = obs["code"]["coding"][0]["code"]
        assert loinc in {"6768-6", "2532-0", "17861-6", "1988-5"}
        assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert obs["valueQuantity"]["code"] == units[loinc]
        assert obs["valueQuantity"]["value"] == demo.case.labs[loinc]
        assert obs["subject"]["reference"] == patient_url
        assert obs["effectiveDateTime"][:10] < iso_study
    assert len(observations) == len(demo.case.labs)
    documents = [r for r in resources if r["resourceType"] == "DocumentReference"]
    if demo.case.note is None:
        assert documents == []
    else:
        (doc,) = documents
        assert doc["status"] == "current" and doc["type"]["coding"][0]["code"] == "11506-3"
        attachment = doc["content"][0]["attachment"]
        assert attachment["contentType"] == "text/plain"
        assert base64.b64decode(attachment["data"]).decode() == demo.case.note


def test_only_the_held_out_list_can_be_rewritten(tmp_path: Path) -> None:
    """``--only test`` writes the same held-out patients as a full write, and nothing else: how a shipped bundle's
    test list is re-made without rendering its training data."""
    full = json.loads((write_cohort(tmp_path / "full", 15, seed=4)).read_text())
    assert main([str(tmp_path / "only"), "--n-patients", "15", "--seed", "4", "--only", "test", "--quiet"]) == 0
    only = json.loads((tmp_path / "only" / "datalist.json").read_text())
    assert only["test"] == full["test"] and only["test"] and not only["training"] and not only["validation"]
    written = {p.name for p in (tmp_path / "only").iterdir() if p.is_dir()}
    assert written == {item["patient_id"] for item in full["test"]}
