"""The IOCM rejection note: lists every superseded object (SR, overlays, presentation states), validates with dciodvfy,
reads back with highdicom, and stays valid when what it rejects carries a source's invalid attributes."""

from __future__ import annotations

import warnings
from pathlib import Path

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import KeyObjectSelectionDocumentStorage
from test_results_common import (
    DICOMDIR_GAPS,
    PIPELINE,
    STUDY_UID,
    VERSION,
    assert_algorithm_equipment,
    assert_valid,
    finding,
    result,
    synthetic_cr,
)

from node.results.gsps import build_presentation_states
from node.results.ko import build_rejection_note
from node.results.sc import build_overlays
from node.results.sr import build_sr
from pipelines.base import PixelBox


def _superseded() -> list[Dataset]:
    """What a first run wrote: its SR, one overlay and one GSPS (pixels not needed, as the worker reads them)."""
    source = synthetic_cr(f"{STUDY_UID}.1.1")
    r = result([source], (finding(source, 1, PixelBox(100, 130, 140, 170)),))
    common = {"manufacturer": "dicom-ai-node", "software_version": "0.1.0"}
    sr = build_sr(r, [source], series_instance_uid="2.25.11", sop_instance_uid="2.25.12", series_number=9901,
                  **common)
    (sc,) = build_overlays(r, [source], series_instance_uid="2.25.21", series_number=9902,
                           sop_uid_for=lambda key: "2.25.22", **common)
    (gsps,) = build_presentation_states(r, [source], series_instance_uid="2.25.31", series_number=9904,
                                        sop_uid_for=lambda key: "2.25.32", **common)
    for ds in (sc, gsps):
        if "PixelData" in ds:
            del ds.PixelData
    return [sr, sc, gsps]


def _note(superseded: list[Dataset]) -> hd.ko.KeyObjectSelectionDocument:
    return build_rejection_note(
        superseded, amended_by="2.25.99", pipeline=PIPELINE, version=VERSION, series_instance_uid="2.25.41",
        sop_instance_uid="2.25.42", series_number=9903, manufacturer="dicom-ai-node",
    )


def _listed(ko: Dataset) -> set[str]:
    return {i.ReferencedSOPInstanceUID for s in ko.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}


def test_rejection_note_lists_sr_overlays_and_presentation_states(tmp_path: Path) -> None:
    superseded = _superseded()
    path = tmp_path / "ko.dcm"
    _note(superseded).save_as(path, enforce_file_format=True)
    assert_valid(path)
    ko = dcmread(path)
    assert ko.SOPClassUID == KeyObjectSelectionDocumentStorage and ko.StudyInstanceUID == STUDY_UID
    assert _listed(ko) == {"2.25.12", "2.25.22", "2.25.32"}
    assert {str(ds.Modality) for ds in superseded} == {"SR", "OT", "PR"}
    doc = hd.ko.KeyObjectSelectionDocument.from_dataset(ko)
    assert doc.ConceptNameCodeSequence[0].CodeValue == codes.DCM.RejectedForQualityReasons.value
    selected = {str(item.referenced_sop_instance_uid) for item in doc.content.get_references()}
    assert selected == {"2.25.12", "2.25.22", "2.25.32"}
    assert doc.resolve_reference("2.25.32") == (STUDY_UID, "2.25.31", "2.25.32")
    assert_algorithm_equipment(ko)


def test_rejecting_objects_that_carry_invalid_source_attributes_gives_a_valid_note(tmp_path: Path) -> None:
    superseded = _superseded()
    with warnings.catch_warnings():  # invalid on purpose: what an older version copied from a bad source
        warnings.simplefilter("ignore")
        for ds in superseded:
            ds.StudyDate, ds.PatientSex, ds.StudyID = "2020-13-45", "Male", "STUDY-ID-0000000042"
    path = tmp_path / "ko-invalid.dcm"
    _note(superseded).save_as(path, enforce_file_format=True)
    assert_valid(path, DICOMDIR_GAPS)
    ko = dcmread(path)
    assert ko.StudyDate in (None, "") and ko.PatientSex in (None, "")
    assert _listed(ko) == {"2.25.12", "2.25.22", "2.25.32"}
