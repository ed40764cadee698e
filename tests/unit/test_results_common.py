"""Shared builders for the results tests: source radiographs, hand-made PipelineResults, and the dciodvfy checks.

Source images are either synthesised with pydicom (CR, 16-bit, MONOCHROME2, realistic attributes; variants with
MONOCHROME1, a VOI LUT Sequence, or the invalid attributes modalities send) or the real MONOCHROME1 CR
"RG3_UNCR.dcm" from the pydicom-data package. Plain functions, used by the test_results_* modules.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_validation import (  # noqa: F401  (re-exported: the results tests import them from here)
    DICOMDIR_GAPS,
    LATERALITY_UNKNOWN,
    assert_valid,
    dciodvfy,
    errors,
    unexpected_warnings,
)
from node.results.uids import device_uid
from pipelines.base import CodedClass, Finding, PipelineResult, PixelBox

MALIGNANT = CodedClass("21594007", "SCT", "Malignant")
BENIGN = CodedClass("30807003", "SCT", "Benign")
STUDY_UID = "1.2.826.0.1.3680043.8.498.11"
PIPELINE = "demo-lesion"
VERSION = "0.3.1"


def synthetic_cr(
    sop_uid: str,
    *,
    rows: int = 480,
    cols: int = 400,
    instance_number: int = 1,
    window: bool = True,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> Dataset:
    """A chest-like CR: 12 bits stored in 16, MONOCHROME2, with a bright blob (the "lesion") on a gradient."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = 600.0 + 1800.0 * yy / rows + 400.0 * np.sin(xx / 25.0)
    pixels += 1200.0 * np.exp(-(((xx - 120) ** 2 + (yy - 150) ** 2) / (2 * 18.0**2)))
    stored = np.clip(pixels, 0, 4095).astype(np.uint16)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = "20250312", "101500"
    ds.ContentDate, ds.ContentTime = "20250312", "101512"
    ds.AccessionNumber = "ACC0042"
    ds.Modality = "CR"
    ds.Manufacturer = "Example Medical"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "XR CHEST PA"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PAT-0042"
    ds.PatientBirthDate = "19640521"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = STUDY_UID + ".1"
    ds.StudyID = "42"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "F"]
    # No Laterality: the chest is unpaired, and dciodvfy (rightly) rejects an empty one for an unpaired part.
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "US"
    if window:
        ds.WindowCenter, ds.WindowWidth = 2048 * slope + intercept, 3000 * slope
    ds.PixelData = stored.tobytes()
    return ds


def mono1_cr(sop_uid: str, **kwargs: Any) -> Dataset:
    """``synthetic_cr`` stored as MONOCHROME1: the same picture (bright blob on a gradient), inverted stored values."""
    ds = synthetic_cr(sop_uid, **kwargs)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.PixelData = (4095 - ds.pixel_array).astype(np.uint16).tobytes()
    if "WindowCenter" in ds:
        ds.WindowCenter = 4095 - float(ds.WindowCenter)
    return ds


# The VOI LUT of ``voi_lut_cr``: linear from stored 0 to 2000, saturated (white) from there on.
VOI_LUT_KNEE = 2000


def voi_lut_cr(sop_uid: str, **kwargs: Any) -> Dataset:
    """``synthetic_cr`` whose only VOI is a VOI LUT Sequence (no window): what some CR/DX plates send."""
    ds = synthetic_cr(sop_uid, window=False, **kwargs)
    lut = np.clip(np.arange(4096) * 65535.0 / VOI_LUT_KNEE, 0, 65535).astype("<u2")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTExplanation = "knee at 2000"
    item.add_new("LUTData", "OW", lut.tobytes())
    ds.VOILUTSequence = [item]
    return ds


# What modalities send that no validator accepts: each must not make our objects invalid. Values are made up.
INVALID_ATTRIBUTES: dict[str, object] = {
    "StudyDate": "2020-13-45",
    "PatientSex": "Male",
    "AccessionNumber": "ACC-0042-0042-0042",  # 18 characters, SH allows 16
    "PatientName": "D" * 65 + "^Jane",  # a component longer than 64
    "StudyID": "STUDY-ID-0000000042",  # 19 characters
    "ReferringPhysicianName": "R" * 70,
    "StudyTime": "25:99",
    "PatientBirthDate": "19641301",
    "Laterality": "B",  # valid CS, but General Series Laterality is R or L
    "PatientOrientation": ["L", "F", "A"],  # VM 2
    "PixelSpacing": [0.2],  # VM 2
    "BodyPartExamined": "chest",  # CS is upper case
}


def invalid_cr(sop_uid: str, **overrides: object) -> Dataset:
    """``synthetic_cr`` carrying ``INVALID_ATTRIBUTES`` (or ``overrides`` of them)."""
    ds = synthetic_cr(sop_uid)
    with warnings.catch_warnings():  # pydicom warns on assignment; these values are invalid on purpose
        warnings.simplefilter("ignore")
        for keyword, value in {**INVALID_ATTRIBUTES, **overrides}.items():
            setattr(ds, keyword, value)
    return ds


def assert_algorithm_equipment(ds: Dataset) -> None:
    """The object names our algorithm the way IHE AI Results asks (Contributing Equipment, "Processing Algorithm")."""
    items = [i for i in ds.ContributingEquipmentSequence
             if i.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
    assert len(items) == 1, ds.ContributingEquipmentSequence
    (item,) = items
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm")
    assert item.Manufacturer == "dicom-ai-node"
    assert item.ManufacturerModelName == f"{PIPELINE} {VERSION}" and item.SoftwareVersions == VERSION
    assert item.DeviceUID == device_uid(PIPELINE, VERSION)
    assert "99IHE" in {s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence}


def real_cr() -> Dataset:
    """RG3_UNCR.dcm: a real Fuji CR of a tibia, MONOCHROME1, 10 of 16 bits, 1760x1760, with a window."""
    path = get_testdata_file("RG3_UNCR.dcm")
    assert path is not None, "pydicom-data (a test dependency: deploy/setup.sh installs it) lacks RG3_UNCR.dcm"
    return dcmread(path)


def finding(
    source: Dataset,
    n: int,
    box: PixelBox,
    cls: CodedClass = MALIGNANT,
    probability: float = 0.87,
    *,
    inputs_missing: tuple[str, ...] = ("labs:2532-0",),
) -> Finding:
    return Finding(
        tracking_uid=generate_uid(entropy_srcs=[str(source.SOPInstanceUID), str(n)]),
        tracking_id=f"lesion {n}",
        class_code=cls,
        probability=probability,
        class_probabilities={cls.meaning: probability, "other": 1.0 - probability},
        detection_score=0.91,
        sop_instance_uid=str(source.SOPInstanceUID),
        sop_class_uid=str(source.SOPClassUID),
        frame_number=1,
        box=box,
        inputs_used=("image", "labs:6768-6"),
        inputs_missing=inputs_missing,
    )


def result(
    sources: list[Dataset],
    findings: tuple[Finding, ...],
    *,
    inputs_missing: tuple[str, ...] = ("labs:2532-0",),
    fhir_status: str = "ok",
) -> PipelineResult:
    return PipelineResult(
        pipeline_name=PIPELINE,
        pipeline_version=VERSION,
        findings=findings,
        images_analysed=tuple(str(s.SOPInstanceUID) for s in sources),
        detection_threshold=0.35,
        inputs_missing=inputs_missing,
        fhir_status=fhir_status,
        device="cpu",
    )


def test_synthetic_cr_is_itself_valid(tmp_path: Path) -> None:
    # The fixture must be a valid CR, or dciodvfy errors on our outputs could be inherited from a broken source.
    path = tmp_path / "cr.dcm"
    synthetic_cr("1.2.826.0.1.3680043.8.498.11.1.1").save_as(path, enforce_file_format=True)
    assert errors(dciodvfy(path)) == []
