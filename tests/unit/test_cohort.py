"""The synthetic cohort: labels drive labs, DICOM files read back with the right attributes, FHIR bundle shape,
and everything is a pure function of the seed."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian

from devtools.synthetic.cohort import LABELS, generate_case, write_cohort, write_demo_study


def test_labels_drive_lab_values_on_average() -> None:
    by_label: dict[str, list[dict[str, float]]] = {label: [] for label in LABELS}
    for index in range(45):
        case = generate_case(11, index)
        if case.worst_label is not None:
            by_label[case.worst_label].append(case.labs)
    for loinc in ("6768-6", "2532-0", "1988-5"):
        means = [np.mean([labs[loinc] for labs in by_label[label] if loinc in labs]) for label in LABELS]
        assert means[0] < means[1] < means[2], (loinc, means)


def test_case_truth_is_consistent() -> None:
    case = generate_case(0, 3, n_images=2, min_lesions=1)
    assert len(case.images) == 2
    for image in case.images:
        assert image.pixels.shape == (512, 512) and image.pixels.dtype == np.uint16
        assert 1 <= len(image.boxes) <= 3 and len(image.boxes) == len(image.labels)
        for x0, y0, x1, y1 in image.boxes:
            assert 0 <= x0 < x1 <= 511 and 0 <= y0 < y1 <= 511
    assert case.worst_label == max(case.labels, key=LABELS.index)


def test_demo_dicom_reads_back(tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path)
    assert len(demo.files) == 2
    assert all(len(boxes_of) for boxes_of in (demo.truth,))
    for number, path in enumerate(demo.files, start=1):
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == ComputedRadiographyImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        assert ds.PatientID == demo.patient_id and ds.PatientID.startswith("SYN-")
        assert ds.StudyInstanceUID == demo.study_instance_uid
        assert str(ds.StudyInstanceUID).startswith("2.25.") and len(ds.SOPInstanceUID) <= 64
        assert ds.BodyPartExamined in {"FEMUR", "TIBIA", "HUMERUS"}
        assert ds.InstanceNumber == number and ds.SeriesNumber == 1
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "AccessionNumber", "SeriesInstanceUID", "ReferringPhysicianName", "StudyID",
                        "PixelSpacing", "ImagerPixelSpacing", "Manufacturer", "SeriesDescription"):
            assert keyword in ds, keyword
        assert ds.pixel_array.shape == (512, 512)
        assert np.array_equal(ds.pixel_array, demo.case.images[number - 1].pixels)
    # each image carries at least one lesion
    assert all(len(image.boxes) >= 1 for image in demo.case.images)


def test_fhir_bundle_structure(tmp_path: Path) -> None:
    demo = write_demo_study(tmp_path)
    bundle = demo.fhir_bundle
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
    for obs in observations:
        assert obs["status"] == "final"
        assert obs["category"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/observation-category"
        assert obs["category"][0]["coding"][0]["code"] == "laboratory"
        assert obs["code"]["coding"][0]["system"] == "http://loinc.org"
        assert obs["code"]["coding"][0]["code"] in {"6768-6", "2532-0", "17861-6", "1988-5"}
        assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert obs["valueQuantity"]["value"] == demo.case.labs[obs["code"]["coding"][0]["code"]]
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


def test_same_seed_same_everything(tmp_path: Path) -> None:
    a, b = generate_case(5, 9), generate_case(5, 9)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes and a.labs == b.labs and a.note == b.note
    assert not np.array_equal(a.image, generate_case(6, 9).image)
    first, second = write_demo_study(tmp_path / "a"), write_demo_study(tmp_path / "b")
    assert [p.name for p in first.files] == [p.name for p in second.files]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(first.files, second.files))
    assert first.fhir_bundle == second.fhir_bundle


def test_write_cohort(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path, n_patients=2, seed=3)
    assert [c.patient_id for c in cases] == ["SYN-003-0001", "SYN-003-0002"]
    assert all(p.exists() for c in cases for p in c.files)
    assert (tmp_path / "SYN-003-0002.fhir.json").exists()
    assert len({c.study_instance_uid for c in cases}) == 2
