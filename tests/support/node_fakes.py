"""Builders shared by the node's unit tests: settings on a temp dir, small CR datasets, a fake pipeline.

The fake pipeline is a real implementation of the Pipeline protocol with a fixed rule (a box on every image
whose mean is bright enough), so worker tests do not load torch; the real pipeline has its own tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian

from node.config import RESULT_KINDS, Settings, parse_settings
from node.localpeers.orthanc import free_port
from node.store import DeliveryRoute
from pipelines.base import (
    ClinicalContext, CodedClass, Finding, LabRequirement, PipelineRequirements, PipelineResult, PixelBox,
    SeriesFilter, StudyInput, missing_inputs,
)

# finish_run's destinations for a node whose only destination is [pacs], receiving every kind of result
TO_PACS = [DeliveryRoute("pacs", frozenset(RESULT_KINDS))]


def uid(*parts: object) -> str:
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(map(str, parts))).int}"


def settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    raw: dict[str, Any] = {"node": {"data_dir": str(tmp_path / "data"), "port": free_port(), "http_port": free_port()}}
    for name, table in sections.items():
        raw[name] = {**raw.get(name, {}), **table}
    return parse_settings(raw, base_dir=tmp_path)


def cr_dataset(study: str, n: int, *, modality: str = "CR", size: int = 64, patient_id: str = "SYN-0001") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid(study, "sop", n)
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = uid(study, "sop", n)
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = uid(study, "series")
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Patient"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "055Y"
    ds.StudyDate = "20260110"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = n
    ds.Modality = modality
    ds.BodyPartExamined = "FEMUR"
    ds.SeriesDescription = "FEMUR AP"
    ds.Manufacturer = "synthetic"
    ds.PatientOrientation = ["L", "F"]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = np.full((size, size), 400, dtype=np.uint16)
    pixels[size // 4: size // 2, size // 4: size // 2] = 3000
    ds.PixelData = pixels.tobytes()
    return ds


def phantom_cr(study: str, n: int, *, seed: int = 7, compressed: bool = False, patient_id: str = "SYN-0001") -> Dataset:
    """A training-cohort radiograph (cohort ``seed``, patient 0, with lesions) as instance ``n`` of a synthetic study:
    an image the shipped radiograph-lesion model analyses (cr_dataset's squares are out of its distribution).
    ``compressed``: JPEG 2000 lossless, as a modality proposing it sends it."""
    from devtools.synthetic.cohort import generate_case
    from devtools.synthetic.cohort_io import case_datasets
    from pydicom.uid import JPEG2000Lossless

    ds = case_datasets(generate_case(seed, 0, min_lesions=1))[0]
    like = cr_dataset(study, n, patient_id=patient_id)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName",
                    "PatientBirthDate", "PatientSex", "PatientAge", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyID", "SeriesNumber", "InstanceNumber"):
        setattr(ds, keyword, like.get(keyword))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if compressed:
        ds.compress(JPEG2000Lossless)
    return ds


def write_cr(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


BRIGHT = CodedClass("C-BRIGHT", "99TEST", "Bright region")


class FakePipeline:
    """Finds the bright square cr_dataset draws; needs one lab and notes, so missing inputs are visible."""

    name = "fake-bright"
    version = "1.0"
    requirements = PipelineRequirements(
        modalities=("CR",), series_filter=SeriesFilter(), labs=(LabRequirement("1988-5", "CRP", "mg/L"),),
        reads_notes=True, dimensionality=2,
    )

    def __init__(self) -> None:
        self.runs = 0

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        self.runs += 1
        missing = missing_inputs(self.requirements, context)
        findings = []
        for ref in study.instances:
            ds = dcmread(ref.path)
            n = int(ds.Rows)
            findings.append(
                Finding(
                    tracking_uid=uid(ref.sop_instance_uid, "finding"), tracking_id="lesion 1", class_code=BRIGHT,
                    probability=0.8, class_probabilities={"Bright region": 0.8, "Dark region": 0.2},
                    detection_score=0.9, sop_instance_uid=ref.sop_instance_uid, sop_class_uid=ref.sop_class_uid,
                    frame_number=1, box=PixelBox(n / 4, n / 4, n / 2, n / 2), inputs_used=("image",),
                    inputs_missing=missing,
                )
            )
        return PipelineResult(
            pipeline_name=self.name, pipeline_version=self.version, findings=tuple(findings),
            images_analysed=tuple(r.sop_instance_uid for r in study.instances), detection_threshold=0.5,
            inputs_missing=missing, fhir_status=context.fhir_status, device="cpu",
        )


def j2k_cr(study: str, n: int, damage: str | None = None, patient_id: str = "SYN-0001") -> Dataset:
    """RG3_J2KR.dcm from pydicom-data (a real 1760x1760 CR, JPEG 2000 lossless) as instance ``n`` of a synthetic
    study, whole or damaged:

    - "garbled": the first tile-part's length field overwritten; items, frame, SIZ and EOC intact, so a structural
      check passes and only a decode finds it (what a flipped bit in transit or on a failing disk does);
    - "truncated": the codestream cut after its first four fragments, so it has no EOC (a transfer cut short).
    """
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_fragments

    path = get_testdata_file("RG3_J2KR.dcm")
    assert path is not None, "pydicom-data (a test dependency: deploy/setup.sh installs it) lacks RG3_J2KR.dcm"
    ds = dcmread(path)
    like = cr_dataset(study, n, patient_id=patient_id)
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "PatientName",
                    "PatientBirthDate", "PatientSex", "PatientAge", "StudyDate", "StudyTime", "AccessionNumber",
                    "StudyID", "SeriesNumber", "InstanceNumber", "Modality", "BodyPartExamined", "SeriesDescription"):
        setattr(ds, keyword, like.get(keyword))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if damage == "garbled":
        data = bytearray(ds.PixelData)
        sot = data.index(b"\xff\x90", data.index(b"\xff\x4f\xff\x51"))
        data[sot + 6: sot + 10] = (10**8).to_bytes(4, "big")  # Psot: a tile-part far longer than the codestream
        ds.PixelData = bytes(data)
    elif damage == "truncated":
        fragments = [f for f in generate_fragments(ds.PixelData) if len(f)]  # skips the empty offset table
        ds.PixelData = encapsulate(fragments[:4], has_bot=False)  # one frame in four fragments
    elif damage is not None:
        raise ValueError(f"unknown damage {damage!r}")
    return ds
