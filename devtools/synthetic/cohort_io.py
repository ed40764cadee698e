"""Serialise a synthetic case: CR Image Storage datasets (pydicom) and a FHIR R4 transaction Bundle (plain dict).

UIDs and FHIR ids are uuid5 of the cohort seed and patient index, so rewriting a case gives identical files.
No file writing here beyond ``Dataset.save_as`` in ``cohort``; no network.
"""

from __future__ import annotations

import base64
import uuid
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian

from devtools.synthetic.evidence import LAB_MODELS

if TYPE_CHECKING:
    from devtools.synthetic.cohort import Case

UID_NAMESPACE = uuid.UUID("0f4d2a52-3c1e-5b8e-9a57-7d1c0e0b6a11")
IMPLEMENTATION_CLASS_UID = "2.25.126457890121237711459312364150953245983"
MRN_SYSTEM = "urn:dicom-ai-node:synthetic-mrn"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def deterministic_uid(*parts: object) -> str:
    """A DICOM UID "2.25.<int>" from uuid5 of the parts (the seed, the patient index, a role...)."""
    return "2.25." + str(uuid.uuid5(UID_NAMESPACE, ":".join(str(p) for p in parts)).int)


def _fhir_id(*parts: object) -> str:
    return str(uuid.uuid5(UID_NAMESPACE, "fhir:" + ":".join(str(p) for p in parts)))


def study_uid(case: Case) -> str:
    return deterministic_uid(case.seed, case.index, "study")


def case_datasets(case: Case) -> list[Dataset]:
    """One CR dataset per image of the case, 12 of 16 bits, explicit VR little endian, with the image's photometric
    interpretation (MONOCHROME1 or 2), window and pixel spacing."""
    demo = case.demographics
    series_uid = deterministic_uid(case.seed, case.index, "series")
    datasets = []
    for number, image in enumerate(case.images, start=1):
        sop_uid = deterministic_uid(case.seed, case.index, "image", number)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        ds.file_meta.ImplementationVersionName = "DAIN_SYNTH_1"
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.SOPClassUID = ComputedRadiographyImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = demo.study_date
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = "093000", "093000", f"0931{number:02d}"
        ds.AccessionNumber = f"SACC{case.index + 1:06d}"
        ds.Modality = "CR"
        ds.Manufacturer = "dicom-ai-node synthetic"
        ds.ManufacturerModelName = "Phantom CR"
        ds.InstitutionName = "Synthetic Hospital"
        ds.ReferringPhysicianName = "Synthetic^Referrer"
        ds.StudyDescription = f"XR {demo.body_part}"
        ds.SeriesDescription = f"{demo.body_part} AP/LAT"
        ds.PatientName = f"{demo.family_name}^{demo.given_name}"
        ds.PatientID = demo.patient_id
        ds.PatientBirthDate = demo.birth_date
        ds.PatientSex = demo.sex
        ds.BodyPartExamined = demo.body_part
        ds.ViewPosition = image.view
        ds.Laterality = demo.laterality
        ds.PatientOrientation = ["L", "F"] if image.view == "AP" else ["A", "F"]
        ds.StudyInstanceUID = study_uid(case)
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = f"{case.index + 1}"
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        ds.ImagerPixelSpacing = [image.pixel_spacing_mm, image.pixel_spacing_mm]
        ds.PixelSpacing = [image.pixel_spacing_mm, image.pixel_spacing_mm]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = image.photometric
        ds.Rows, ds.Columns = image.pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.WindowCenter, ds.WindowWidth = round(image.window[0]), round(image.window[1])
        ds.PixelData = np.ascontiguousarray(image.pixels, dtype="<u2").tobytes()
        datasets.append(ds)
    return datasets


def _iso_date(dicom_date: str) -> date:
    return date(int(dicom_date[:4]), int(dicom_date[4:6]), int(dicom_date[6:8]))


def fhir_bundle(case: Case) -> dict[str, Any]:
    """A FHIR R4 transaction Bundle: Patient, one laboratory Observation per lab present, a DocumentReference."""

    demo = case.demographics
    patient_url = f"urn:uuid:{_fhir_id(case.seed, case.index, 'patient')}"
    subject = {"reference": patient_url}
    study_day = _iso_date(demo.study_date)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": MRN_SYSTEM, "value": demo.patient_id}],
                "name": [{"family": demo.family_name, "given": [demo.given_name]}],
                "birthDate": _iso_date(demo.birth_date).isoformat(),
                "gender": "male" if demo.sex == "M" else "female",
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for n, lab in enumerate(LAB_MODELS):
        loinc, display, unit = lab.loinc, lab.display, lab.unit
        if loinc not in case.labs:
            continue
        effective = study_day - timedelta(days=2 + n)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{_fhir_id(case.seed, case.index, 'obs', loinc)}",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [
                        {"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
                    ],
                    "code": {"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display},
                    "subject": subject,
                    "effectiveDateTime": f"{effective.isoformat()}T08:15:00Z",
                    "valueQuantity": {"value": case.labs[loinc], "unit": unit, "system": UCUM, "code": unit},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    if case.note is not None:
        written = study_day - timedelta(days=1)
        entries.append(
            {
                "fullUrl": f"urn:uuid:{_fhir_id(case.seed, case.index, 'note')}",
                "resource": {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
                    "subject": subject,
                    "date": f"{written.isoformat()}T16:00:00Z",
                    "content": [
                        {
                            "attachment": {
                                "contentType": "text/plain",
                                "data": base64.b64encode(case.note.encode("utf-8")).decode("ascii"),
                            }
                        }
                    ],
                },
                "request": {"method": "POST", "url": "DocumentReference"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
