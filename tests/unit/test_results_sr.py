"""The TID 1500 SR: written to disk, validated with dciodvfy, read back with highdicom and asserted on."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage
from test_results_common import (
    BENIGN,
    DICOMDIR_GAPS,
    MALIGNANT,
    PIPELINE,
    STUDY_UID,
    VERSION,
    assert_algorithm_equipment,
    assert_valid,
    finding,
    invalid_cr,
    real_cr,
    result,
    synthetic_cr,
)

from node.results import coding
from node.results.sr import build_sr, read_findings
from node.results.uids import device_uid, input_digest, result_uid
from pipelines.base import ExcludedInstance, PipelineResult, PixelBox
from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION_REQUIREMENTS


MALIGNANT_CODE = Code(MALIGNANT.value, MALIGNANT.scheme_designator, MALIGNANT.meaning)


@pytest.fixture
def sources() -> list[Dataset]:
    return [synthetic_cr(f"{STUDY_UID}.1.{i}", instance_number=i) for i in (1, 2)]


def _uids(r: PipelineResult, study_uid: str) -> dict[str, str]:
    digest = input_digest(r.images_analysed, f"fhir={r.fhir_status};missing={','.join(r.inputs_missing)}")
    return {
        role: result_uid(study_uid, r.pipeline_name, r.pipeline_version, digest, role) for role in ("sr", "sr-series")
    }


def _write(r: PipelineResult, sources: list[Dataset], path: Path) -> hd.sr.Comprehensive3DSR:
    uids = _uids(r, str(sources[0].StudyInstanceUID))
    sr = build_sr(
        r,
        sources,
        series_instance_uid=uids["sr-series"],
        sop_instance_uid=uids["sr"],
        series_number=9001,
        manufacturer="dicom-ai-node",
        software_version="0.1.0",
    )
    sr.save_as(path, enforce_file_format=True)
    return sr


def _statements(report: hd.sr.MeasurementReport) -> Dataset:
    """The report-level Qualitative Evaluations container (TID 1500 row 10) with the study-level statements."""
    (container,) = hd.sr.utils.find_content_items(report[0], name=coding.QUALITATIVE_EVALUATIONS)
    return container


def _presence(report: hd.sr.MeasurementReport) -> Dataset:
    (presence,) = hd.sr.utils.find_content_items(_statements(report), name=codes.DCM.PresenceOfProperty)
    return presence


def _images_under(item: Dataset) -> set[str]:
    return {str(i.referenced_sop_instance_uid) for i in hd.sr.utils.find_content_items(item, value_type="IMAGE")}


def _assert_every_group_has_a_region(report: hd.sr.MeasurementReport) -> None:
    # A measurement group without SCOORD is what made OHIF 3 fail on our SR (no box, blank viewport): its
    # SR loader takes every group as something to draw. Study-level statements live in the report-level container.
    assert report.get_image_measurement_groups() == []
    for group in report.get_planar_roi_measurement_groups():
        assert group.roi is not None


def _assert_valid(path: Path) -> None:
    assert_valid(path)


def test_sr_with_findings_round_trips(tmp_path: Path, sources: list[Dataset]) -> None:
    a, b = sources
    f1 = finding(a, 1, PixelBox(100.0, 130.0, 140.5, 170.25))
    f2 = finding(a, 2, PixelBox(250.0, 300.0, 300.0, 360.0), BENIGN, 0.66, inputs_missing=())
    r = result(sources, (f1, f2), inputs_missing=("labs:2532-0",))
    path = tmp_path / "sr.dcm"
    _write(r, sources, path)
    _assert_valid(path)

    doc = hd.sr.srread(path)
    assert isinstance(doc, hd.sr.Comprehensive3DSR)
    assert doc.SOPClassUID == Comprehensive3DSRStorage
    # Original study and patient, new series.
    assert doc.StudyInstanceUID == STUDY_UID
    assert doc.SeriesInstanceUID != a.SeriesInstanceUID
    assert (doc.PatientID, str(doc.PatientName), doc.AccessionNumber) == ("PAT-0042", "Doe^Jane", "ACC0042")
    assert doc.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == coding.PRIVATE_SCHEME

    summary = read_findings(doc)
    assert summary.study_instance_uid == STUDY_UID
    assert (summary.algorithm_name, summary.algorithm_version) == (PIPELINE, VERSION)
    assert summary.nothing_found is False
    assert summary.detection_threshold == pytest.approx(0.35)
    assert summary.images_analysed == (str(a.SOPInstanceUID), str(b.SOPInstanceUID))
    assert summary.inputs_missing == ("labs:2532-0",)
    assert summary.fhir_status == "ok"

    by_id = {s.tracking_id: s for s in summary.findings}
    assert set(by_id) == {"lesion 1", "lesion 2"}
    one, two = by_id["lesion 1"], by_id["lesion 2"]
    assert one.tracking_uid == f1.tracking_uid and two.tracking_uid == f2.tracking_uid
    assert one.box == pytest.approx((100.0, 130.0, 140.5, 170.25))
    assert two.box == pytest.approx((250.0, 300.0, 300.0, 360.0))
    assert (one.class_value, one.class_scheme, one.class_meaning) == (MALIGNANT.value, "SCT", "Malignant")
    assert two.class_meaning == "Benign"
    assert one.probability == pytest.approx(0.87) and two.probability == pytest.approx(0.66)
    assert one.detection_score == pytest.approx(0.91)
    assert one.finding_type == "Lesion"
    assert one.sop_instance_uid == str(a.SOPInstanceUID) and one.frame_number == 1
    assert one.inputs_used == ("image", "labs:6768-6")
    assert one.inputs_missing == ("labs:2532-0",) and two.inputs_missing == ()


def test_sr_structure_uses_the_standard_templates(tmp_path: Path, sources: list[Dataset]) -> None:
    a = sources[0]
    r = result(sources, (finding(a, 1, PixelBox(10, 20, 30, 40)),))
    path = tmp_path / "sr.dcm"
    _write(r, sources, path)
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert report[0].name == codes.cid7021.ImagingMeasurementReport

    (device,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    attrs = device.observer_identifying_attributes
    assert isinstance(attrs, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attrs.uid == device_uid(PIPELINE, VERSION) and attrs.name == PIPELINE

    # Two TID 1410 groups for the finding, one Tracking UID: what was found, then its numbers (OHIF tracks a group
    # from its own region only when the group has no NUMs).
    found, numbers = report.get_planar_roi_measurement_groups(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, referenced_sop_instance_uid=str(a.SOPInstanceUID)
    )
    _assert_every_group_has_a_region(report)
    for group in (found, numbers):
        assert group[0].ContentTemplateSequence[0].TemplateIdentifier == "1410"
        assert group.tracking_uid == r.findings[0].tracking_uid and group.tracking_identifier == "lesion 1"
        roi = group.roi
        assert roi is not None and roi.value.shape == (5, 2)
        assert (roi.value[0] == roi.value[-1]).all()  # closed
        assert group.finding_type == codes.SCT.Lesion
        algo = hd.sr.utils.find_content_items(group[0], name=codes.DCM.AlgorithmName)
        assert [i.value for i in algo] == [PIPELINE]
    assert found.roi is not None and numbers.roi is not None and (found.roi.value == numbers.roi.value).all()
    assert found.get_measurements() == []
    (cls,) = found.get_qualitative_evaluations(name=coding.CLASSIFICATION)
    assert cls.value == MALIGNANT_CODE
    assert numbers.get_qualitative_evaluations() == []
    # The probability is named by the class (what a viewer's label shows), its meaning spelled out beside it.
    prob, score = numbers.get_measurements()
    assert (prob.name, prob.value, prob.unit) == (MALIGNANT_CODE, pytest.approx(0.87), codes.UCUM.NoUnits)
    (meaning,) = hd.sr.utils.find_content_items(prob[0], name=codes.DCM.EquivalentMeaningOfConceptName)
    assert meaning.value == "Probability of Malignant"
    assert (score.name, score.unit) == (codes.DCM.CertaintyOfFinding, codes.UCUM.NoUnits)


def test_no_findings_sr_says_nothing_found_and_what_was_missing(tmp_path: Path, sources: list[Dataset]) -> None:
    r = result(sources, (), inputs_missing=("labs", "notes"), fhir_status="unreachable")
    path = tmp_path / "sr-empty.dcm"
    _write(r, sources, path)
    _assert_valid(path)

    summary = read_findings(dcmread(path))
    assert summary.findings == ()
    assert summary.nothing_found is True
    assert summary.inputs_missing == ("labs", "notes")
    assert summary.fhir_status == "unreachable"
    assert summary.images_analysed == tuple(str(s.SOPInstanceUID) for s in sources)

    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    # No findings: no Imaging Measurements container at all, only the study-level statements (TID 1500 asks for
    # one of the two), and no "Imaging Measurement Report" title (OHIF 3's measurement viewport fails on one without
    # measurements); "lesion absent" names the algorithm, its threshold and the images it was inferred from.
    assert hd.sr.utils.find_content_items(report[0], name=codes.DCM.ImagingMeasurements) == []
    assert report[0].name == coding.NOTHING_MEASURED_TITLE
    assert report[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"
    _assert_every_group_has_a_region(report)
    presence = _presence(report)
    assert presence.value == codes.SCT.Absent
    (finding_type,) = hd.sr.utils.find_content_items(presence, name=codes.DCM.Finding)
    assert finding_type.value == codes.SCT.Lesion
    (algorithm,) = hd.sr.utils.find_content_items(presence, name=codes.DCM.AlgorithmName)
    assert algorithm.value == PIPELINE
    assert _images_under(presence) == {s.SOPInstanceUID for s in sources}


def test_excluded_instances_are_named_with_their_reason(tmp_path: Path, sources: list[Dataset]) -> None:
    a, b = sources
    bad = synthetic_cr(f"{STUDY_UID}.1.3", instance_number=3)
    excluded = (
        ExcludedInstance(str(bad.SOPInstanceUID), "undecodable",
                         "RuntimeError: pylibjpeg: Error decoding the J2K data: failed to decode image"),
        ExcludedInstance(str(b.SOPInstanceUID), "unreadable", ""),
    )
    r = PipelineResult(**{**result([a], (finding(a, 1, PixelBox(10, 20, 30, 40)),)).__dict__,
                          "instances_excluded": excluded})
    path = tmp_path / "sr-excluded.dcm"
    _write(r, [a, b, bad], path)
    _assert_valid(path)
    summary = read_findings(dcmread(path))
    assert summary.images_analysed == (str(a.SOPInstanceUID),)
    assert summary.instances_excluded == excluded
    assert len(summary.findings) == 1 and summary.nothing_found is False
    # the excluded images are evidence of the SR (referenced), not images "lesion present" was inferred from
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert _images_under(_presence(report)) == {a.SOPInstanceUID}
    not_analysed = hd.sr.utils.find_content_items(_statements(report), name=coding.NOT_ANALYSED)
    assert [_images_under(item) for item in not_analysed] == [{bad.SOPInstanceUID}, {b.SOPInstanceUID}]
    # an SR without exclusions reads back none
    plain = tmp_path / "sr-plain.dcm"
    _write(result(sources, ()), sources, plain)
    assert read_findings(dcmread(plain)).instances_excluded == ()


def test_sr_on_real_monochrome1_radiograph(tmp_path: Path) -> None:
    cr = real_cr()
    f = finding(cr, 1, PixelBox(790.0, 1035.0, 925.0, 1230.0))
    r = result([cr], (f,), inputs_missing=(), fhir_status="ok")
    path = tmp_path / "sr-real.dcm"
    _write(r, [cr], path)
    _assert_valid(path)
    summary = read_findings(dcmread(path))
    assert summary.study_instance_uid == cr.StudyInstanceUID
    assert summary.inputs_missing == () and summary.nothing_found is False
    (only,) = summary.findings
    assert only.box == pytest.approx((790.0, 1035.0, 925.0, 1230.0))
    assert only.sop_instance_uid == cr.SOPInstanceUID


def test_building_twice_gives_identical_uids(tmp_path: Path, sources: list[Dataset]) -> None:
    r = result(sources, (finding(sources[0], 1, PixelBox(10, 20, 30, 40)),))
    first = _write(r, sources, tmp_path / "1.dcm")
    second = _write(r, sources, tmp_path / "2.dcm")
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.")
    # A different input (here: one image fewer) must give a different object.
    other = result(sources[:1], r.findings)
    assert _uids(other, STUDY_UID)["sr"] != first.SOPInstanceUID


def test_uid_helpers() -> None:
    d1 = input_digest(["1.2.3", "1.2.4"], "labs=ok")
    assert d1 == input_digest(["1.2.4", "1.2.3"], "labs=ok")  # order-independent
    assert d1 != input_digest(["1.2.3", "1.2.4"], "labs=missing")
    assert d1 != input_digest(["1.2.3"], "labs=ok")
    u = result_uid(STUDY_UID, PIPELINE, VERSION, d1, "sr")
    assert u == result_uid(STUDY_UID, PIPELINE, VERSION, d1, "sr")
    assert len({u, result_uid(STUDY_UID, PIPELINE, VERSION, d1, "sr-series"),
                result_uid(STUDY_UID, PIPELINE, "0.3.2", d1, "sr")}) == 3
    assert u.startswith("2.25.") and len(u) <= 64
    with pytest.raises(ValueError):
        result_uid(STUDY_UID, PIPELINE, VERSION, d1, "")


def test_rejects_what_it_cannot_state_truthfully(sources: list[Dataset]) -> None:
    a = sources[0]

    def build(r: PipelineResult, srcs: list[Dataset]) -> None:
        build_sr(r, srcs, series_instance_uid="2.25.1", sop_instance_uid="2.25.2", series_number=1,
                 manufacturer="m", software_version="v")

    with pytest.raises(ValueError, match="probability"):
        build(result(sources, (finding(a, 1, PixelBox(1, 1, 5, 5), probability=1.5),)), sources)
    with pytest.raises(ValueError, match="degenerate"):
        build(result(sources, (finding(a, 1, PixelBox(5, 5, 5, 9)),)), sources)
    with pytest.raises(ValueError, match="not among the sources"):
        build(result(sources, (finding(a, 1, PixelBox(1, 1, 5, 5)),)), sources[1:])
    with pytest.raises(ValueError, match="fhir_status"):
        build(result(sources, (), fhir_status="maybe"), sources)
    unknown_reason = (ExcludedInstance(str(sources[1].SOPInstanceUID), "cursed"),)
    with pytest.raises(ValueError, match="exclusion reason"):
        build(PipelineResult(**{**result(sources[:1], ()).__dict__, "instances_excluded": unknown_reason}), sources)
    not_a_source = (ExcludedInstance("1.2.3.999", "undecodable"),)
    with pytest.raises(ValueError, match="not among the sources"):
        build(PipelineResult(**{**result(sources, ()).__dict__, "instances_excluded": not_a_source}), sources)


def test_finding_site_comes_from_body_part_else_from_the_pipeline(tmp_path: Path) -> None:
    chest = synthetic_cr(f"{STUDY_UID}.1.1")  # Body Part Examined CHEST (unpaired)
    femur = synthetic_cr(f"{STUDY_UID}.1.2", instance_number=2)
    femur.BodyPartExamined, femur.Laterality = "FEMUR", "L"  # paired: the side is stated
    unknown = synthetic_cr(f"{STUDY_UID}.1.3", instance_number=3)
    del unknown.BodyPartExamined  # nothing to map: the pipeline's declared region is the site
    sources = [chest, femur, unknown]
    findings = tuple(finding(s, n, PixelBox(10, 20, 30, 40)) for n, s in enumerate(sources, start=1))
    uids = _uids(result(sources, findings), STUDY_UID)
    sr = build_sr(result(sources, findings), sources, series_instance_uid=uids["sr-series"],
                  sop_instance_uid=uids["sr"], series_number=9001, manufacturer="dicom-ai-node",
                  software_version="0.1.0", anatomy=RADIOGRAPH_LESION_REQUIREMENTS.anatomy)
    path = tmp_path / "sr-sites.dcm"
    sr.save_as(path, enforce_file_format=True)
    _assert_valid(path)
    by_id = {f.tracking_id: f for f in read_findings(dcmread(path)).findings}
    site = {k: (f.finding_site.value, f.finding_site.meaning, f.laterality) for k, f in by_id.items()
            if f.finding_site is not None}
    # PS3.16 Annex L: CHEST -> (816094009, SCT, "Chest"), FEMUR -> (71341001, SCT, "Femur"); both in CID 4031
    assert site == {
        "lesion 1": (codes.SCT.Chest.value, "Chest", ""),
        "lesion 2": (codes.SCT.Femur.value, "Femur", "L"),
        "lesion 3": (codes.SCT.Extremity.value, "Extremity", ""),
    }
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    group = report.get_planar_roi_measurement_groups(referenced_sop_instance_uid=str(femur.SOPInstanceUID))[0]
    (finding_site,) = group.finding_sites
    assert finding_site.laterality == codes.SCT.Left


def test_sr_names_the_algorithm_as_contributing_equipment(tmp_path: Path, sources: list[Dataset]) -> None:
    path = tmp_path / "sr.dcm"
    _write(result(sources, (finding(sources[0], 1, PixelBox(10, 20, 30, 40)),)), sources, path)
    assert_algorithm_equipment(dcmread(path))


def test_sr_of_a_source_with_invalid_attributes_is_valid(tmp_path: Path) -> None:
    source = invalid_cr(f"{STUDY_UID}.1.1")
    path = tmp_path / "sr-invalid-source.dcm"
    _write(result([source], (finding(source, 1, PixelBox(10, 20, 30, 40)),)), [source], path)
    assert_valid(path, DICOMDIR_GAPS)  # Study Date, Time and ID were invalid: emptied
    sr = dcmread(path)
    assert sr.StudyInstanceUID == STUDY_UID and sr.PatientID == source.PatientID  # still the same study
    assert sr.StudyDate in (None, "") and sr.PatientSex in (None, "") and sr.AccessionNumber in (None, "")
    assert read_findings(sr).findings[0].box == pytest.approx((10, 20, 30, 40))
