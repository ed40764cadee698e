"""node.delivery.report on SRs written by our own writer (node.results.sr): patient, study, pipeline and findings
come back typed; a not-analysed SR says why; an amendment says what it amends; anything else is refused by name.

The ``write_*`` helpers are also what the fhir and hl7-mllp destination tests send."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from test_results_common import STUDY_UID, VERSION, finding, result, synthetic_cr

from node.delivery.report import ReportError, fhir_system, hl7v2_system, read_report
from node.priority import DEFAULT_RULES, Priority, decide
from node.results.sr import build_sr
from node.results.uids import result_uid
from pipelines.base import ExcludedInstance, PipelineResult, PixelBox
from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION_CLASSES

MALIGNANT = RADIOGRAPH_LESION_CLASSES[2]  # SCT 86049000: the default rules make a likely one urgent
BENIGN = RADIOGRAPH_LESION_CLASSES[1]


def sources() -> list[Dataset]:
    return [synthetic_cr(f"{STUDY_UID}.1.{i}", instance_number=i) for i in (1, 2)]


def write_sr(path: Path, r: PipelineResult, srcs: list[Dataset], previous: list[Dataset] | None = None,
             role: str = "sr") -> Path:
    study = str(srcs[0].StudyInstanceUID)
    build_sr(r, srcs, series_instance_uid=result_uid(study, r.pipeline_name, r.pipeline_version, role, "series"),
             sop_instance_uid=result_uid(study, r.pipeline_name, r.pipeline_version, role, "sr"), series_number=9001,
             manufacturer="dicom-ai-node", software_version="0.1.0", previous_versions=previous or (),
             ).save_as(path, enforce_file_format=True)
    return path


def write_findings_sr(tmp_path: Path, name: str = "sr.dcm") -> Path:
    """Two findings on the first image: a likely malignant one (0.87) and a benign one (0.66)."""
    srcs = sources()
    f1 = finding(srcs[0], 1, PixelBox(100.0, 130.0, 140.0, 170.0), MALIGNANT, 0.87)
    f2 = finding(srcs[0], 2, PixelBox(250.0, 300.0, 300.0, 360.0), BENIGN, 0.66)
    return write_sr(tmp_path / name, result(srcs, (f1, f2)), srcs)


def write_amendment(tmp_path: Path, original: Path) -> Path:
    """The same study re-read: the malignant finding alone, amending ``original``."""
    srcs = sources()
    f1 = finding(srcs[0], 1, PixelBox(100.0, 130.0, 140.0, 170.0), MALIGNANT, 0.91)
    return write_sr(tmp_path / "amended.dcm", result(srcs, (f1,)), srcs, [dcmread(original)], role="sr-2")


def write_empty_sr(tmp_path: Path) -> Path:
    srcs = sources()
    return write_sr(tmp_path / "empty.dcm", result(srcs, ()), srcs)


def write_not_analysed_sr(tmp_path: Path) -> Path:
    srcs = sources()
    r = PipelineResult(
        pipeline_name="demo-lesion", pipeline_version=VERSION, findings=(), images_analysed=(),
        detection_threshold=None, inputs_missing=(), fhir_status="ok", device="cpu",
        instances_excluded=tuple(ExcludedInstance(str(s.SOPInstanceUID), "outside-intended-use", "lateral view")
                                 for s in srcs),
    )
    return write_sr(tmp_path / "not-analysed.dcm", r, srcs)


def test_findings_sr_reads_back_typed(tmp_path: Path) -> None:
    path = write_findings_sr(tmp_path)
    sr = dcmread(path)
    report = read_report(path)
    assert report.sr_sop_instance_uid == sr.SOPInstanceUID and report.sr_series_instance_uid == sr.SeriesInstanceUID
    assert report.study_instance_uid == STUDY_UID
    assert (report.accession_number, report.patient_id, report.patient_name) == ("ACC0042", "PAT-0042", "Doe^Jane")
    assert (report.patient_birth_date, report.patient_sex) == (date(1964, 5, 21), "F")
    assert (report.pipeline, report.pipeline_version) == ("demo-lesion", VERSION)
    assert report.analysed and not report.amended and report.not_analysed_reason == ""
    malignant, benign = report.findings
    assert (malignant.finding.class_scheme, malignant.finding.class_value) == ("SCT", "86049000")
    assert malignant.finding.probability == pytest.approx(0.87)
    assert (malignant.finding.pipeline, malignant.finding.pipeline_version) == ("demo-lesion", VERSION)
    assert benign.finding.class_meaning == BENIGN.meaning
    assert malignant.tracking_id == "lesion 1" and malignant.tracking_uid != benign.tracking_uid
    assert malignant.finding_site is not None and malignant.finding_site.value == "816094009"  # CR of the chest
    # what the priority rules see: the malignant finding makes the study urgent
    decision = decide(report.ranked, DEFAULT_RULES)
    assert decision.priority == Priority.URGENT and decision.finding == malignant.finding


def test_not_analysed_and_empty_srs(tmp_path: Path) -> None:
    skipped = read_report(write_not_analysed_sr(tmp_path))
    assert not skipped.analysed and skipped.findings == ()
    assert skipped.not_analysed_reason == "2 instance(s) outside-intended-use (lateral view)"
    empty = read_report(write_empty_sr(tmp_path))
    assert empty.analysed and empty.findings == () and empty.not_analysed_reason == ""


def test_amendment_names_its_predecessor(tmp_path: Path) -> None:
    original = write_findings_sr(tmp_path)
    amended = read_report(write_amendment(tmp_path, original))
    assert amended.amended and amended.amends == (str(dcmread(original).SOPInstanceUID),)
    assert [f.finding.probability for f in amended.findings] == [pytest.approx(0.91)]


def test_other_files_are_refused_by_name(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    with pytest.raises(ReportError, match="notes.txt: cannot be read as DICOM"):
        read_report(text)
    image = tmp_path / "image.dcm"
    sources()[0].save_as(image, enforce_file_format=True)
    with pytest.raises(ReportError, match="image.dcm: not an SR written by this node"):
        read_report(image)


def test_coding_systems() -> None:
    assert fhir_system("SCT") == "http://snomed.info/sct"
    assert fhir_system("99AINODE") == "urn:dicom-ai-node:coding-scheme:99AINODE"
    assert (hl7v2_system("SCT"), hl7v2_system("ICDO3"), hl7v2_system("99AINODE")) == ("SCT", "ICDO", "99AINODE")


def test_peer_messages_are_redacted_before_they_reach_the_logs(tmp_path: Path) -> None:
    report = read_report(write_findings_sr(tmp_path))
    said = "Patient pat-0042 (DOE, Jane, born 1964-05-21 / 19640521) has no order ACC0042; Doe^Jane unknown"
    assert report.redact(said) == ("Patient <patient id> (<name>, <name>, born <birth date> / <birth date>) has no "
                                   "order <accession>; <name>^<name> unknown")
