"""A pipeline's result as one TID 1500 Comprehensive 3D SR in the original study, and reading such an SR back.

Everything is built with highdicom's template and content item classes; this module only maps Findings onto them.
It does not pick UIDs (the caller passes deterministic ones from ``uids``), touch the network, or render pixels
(that is ``sc``). The layout is one SR viewers draw and track (OHIF 3 among them, tests/viewer): TID 1410 groups with
the box for each finding, and every study-level statement in the report-level Qualitative Evaluations container,
never in a group without a region. A 3D finding adds, after its TID 1410 groups on the slice through its centre, a
TID 1411 group with its box in patient coordinates and its long axis in mm (``sr3d``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.results import coding, sr3d
from node.results.anatomy import finding_site, side_of
from node.results.equipment import algorithm_equipment
from node.results.source_attrs import sanitized
from node.results.uids import device_uid
from pipelines.base import CodedClass, ExcludedInstance, Finding, PatientBox, PipelineResult

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_HAS_CONCEPT_MOD = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD
_HAS_PROPERTIES = hd.sr.RelationshipTypeValues.HAS_PROPERTIES
_INFERRED_FROM = hd.sr.RelationshipTypeValues.INFERRED_FROM


@dataclass(frozen=True)
class FindingSummary:
    """One finding of our SR as read back: its TID 1410 groups (and, for a 3D finding, its TID 1411 group)."""

    tracking_id: str
    tracking_uid: str
    finding_type: str  # meaning, e.g. "Lesion"
    class_value: str
    class_scheme: str
    class_meaning: str
    probability: float
    detection_score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (column, row)
    sop_instance_uid: str
    frame_number: int
    inputs_used: tuple[str, ...]
    inputs_missing: tuple[str, ...]
    finding_site: CodedClass | None = None  # TID 1410 Finding Site, e.g. (816094009, SCT, "Chest")
    laterality: str = ""  # of the finding site: "R", "L" or "" (not stated)
    # 3D findings only: the box in patient coordinates (from the TID 1411 ELLIPSOID) and the long axis (mm)
    volume_box: PatientBox | None = None
    long_axis_mm: float | None = None


@dataclass(frozen=True)
class SrSummary:
    """What our SR says, in the project's vocabulary (what the demo prints and the tests assert on)."""

    sop_instance_uid: str
    study_instance_uid: str
    algorithm_name: str
    algorithm_version: str
    findings: tuple[FindingSummary, ...]
    nothing_found: bool  # analysed, and no lesion above the threshold
    detection_threshold: float | None  # None: no input could be analysed and the pipeline never ran
    images_analysed: tuple[str, ...]
    inputs_missing: tuple[str, ...]
    fhir_status: str
    predecessors: tuple[str, ...] = ()  # SOP Instance UIDs of the SRs this one amends
    instances_excluded: tuple[ExcludedInstance, ...] = ()  # inputs not analysed, with the reason

    @property
    def analysed(self) -> bool:
        """False when no input could be analysed: "Presence of property" is then "Not Evaluated"."""
        return bool(self.images_analysed)

    @property
    def amended(self) -> bool:
        return bool(self.predecessors)


def device_observer(pipeline: str, version: str, manufacturer: str) -> hd.sr.ObserverContext:
    """The algorithm as the observer of what our SR and rejection notes state (one Device UID per version)."""
    return hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(pipeline, version),
            name=pipeline,
            manufacturer_name=manufacturer,
            model_name=f"{pipeline} {version}",
        ),
    )


def build_sr(
    result: PipelineResult,
    sources: Sequence[Dataset],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    manufacturer: str,
    software_version: str,
    previous_versions: Sequence[Dataset] = (),
    anatomy: CodedClass | None = None,
) -> hd.sr.Comprehensive3DSR:
    """One SR for one pipeline run on one study: the TID 1410 groups of each finding, and the study-level statements.

    ``sources`` are the analysed images (pixel data not needed), then the excluded ones; patient and study come
    from the first, so the SR lands in the original study. Every finding, every ``images_analysed`` and every
    ``instances_excluded`` UID must be among them.
    ``previous_versions``: the SR(s) this one amends (a re-run on changed inputs); they go into the Predecessor
    Documents Sequence and the series description says "amended".
    ``anatomy``: the pipeline's region, the finding site of findings on images whose Body Part Examined is not coded.
    """
    if not sources:
        raise ValueError("build_sr needs the source images (patient/study module and references come from them)")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    referenced = [f.sop_instance_uid for f in result.findings] + list(result.images_analysed)
    referenced += [e.sop_instance_uid for e in result.instances_excluded]
    unknown = sorted({u for u in referenced if u not in by_uid})
    if unknown:
        raise ValueError(f"result references instances not among the sources: {unknown}")

    algorithm = hd.sr.AlgorithmIdentification(
        name=result.pipeline_name,
        version=result.pipeline_version,
        # The threshold decides what "no lesion" means, so it travels with every statement made under it.
        parameters=[f"detection_threshold={result.detection_threshold:g}"]
        if result.detection_threshold is not None else None,
    )
    observer = device_observer(result.pipeline_name, result.pipeline_version, manufacturer)
    report = _measurement_report(
        hd.sr.ObservationContext(observer_device_context=observer),
        [group for f in result.findings
         for group in _finding_groups(f, algorithm, finding_site(by_uid[f.sop_instance_uid], anatomy),
                                      by_uid[f.sop_instance_uid])],
        _study_evaluations(result, by_uid, algorithm),
    )
    return hd.sr.Comprehensive3DSR(
        # patient and study are copied from the first: only its valid attributes (source_attrs)
        evidence=[sanitized(ds) for ds in sources],
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        # Complete, but an unverified machine statement: PRELIMINARY / UNVERIFIED until a reader signs off.
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=(
            f"AI {result.pipeline_name} {result.pipeline_version}{' amended' if previous_versions else ''}"
            " - not for diagnostic use"
        )[:64],
        software_versions=software_version,
        coding_schemes=[coding.PRIVATE_SCHEME_ITEM, coding.IHE_SCHEME_ITEM],
        previous_versions=list(previous_versions) or None,
        contributing_equipment=[algorithm_equipment(result.pipeline_name, result.pipeline_version, manufacturer)],
    )


def _unit_interval(name: str, value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _input_evaluations(name: Code, tokens: Sequence[str]) -> list[hd.sr.QualitativeEvaluation]:
    return [hd.sr.QualitativeEvaluation(name=name, value=coding.input_code(t)) for t in tokens]


_Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations


def _finding_groups(
    finding: Finding, algorithm: hd.sr.AlgorithmIdentification, site: hd.sr.FindingSite | None, source: Dataset
) -> list[_Group]:
    """Two TID 1410 groups about one finding, the same box and Tracking Unique Identifier in both: what was found
    (class, inputs), then the numbers (probability, detector score; for a 3D finding also its long axis in mm).
    A 3D finding (``volume_box``) gets a third group with the same Tracking Unique Identifier, after them: TID 1411
    with its box in patient coordinates (``sr3d``). The 2D groups stay first: OHIF 3 merges a finding's groups and
    draws the first region it meets, which must be the one on the slice through the centre.

    One group would say it all, but OHIF 3 could then show the finding and not track it: its measurement tracking
    (the cornerstone SR adapters) reads the geometry of a group that has NUMs from under its first NUM, where TID
    1410 has it (and highdicom only allows it) on the group. A group without NUMs is tracked from its own region.
    Viewers merge groups by Tracking Unique Identifier (TID 1500's way of saying "the same finding"), so the box
    is drawn once, labelled with the numbers.
    """
    box = finding.box
    if not (box.x1 > box.x0 and box.y1 > box.y0):
        raise ValueError(f"{finding.tracking_id}: degenerate box {box}")
    # Closed POLYLINE (first point repeated): the rectangle itself, which every SR viewer can draw, where an
    # ELLIPSE or a 2-point polyline would need interpretation. PixelBox uses DICOM's (column, row) image coordinates.
    corners = np.array(
        [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1], [box.x0, box.y0]],
        dtype=np.float32,
    )
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=corners,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=finding.sop_class_uid,
            referenced_sop_instance_uid=finding.sop_instance_uid,
            # Referenced Frame Number is only meaningful (and only allowed by highdicom) for multi-frame images.
            referenced_frame_numbers=[finding.frame_number] if finding.frame_number > 1 else None,
        ),
    )
    cls = finding.class_code
    class_concept = hd.sr.CodedConcept(value=cls.value, scheme_designator=cls.scheme_designator, meaning=cls.meaning)
    # The probability's NUM is named by the class itself: SR viewers label a box with its NUMs' names and values
    # (OHIF 3: "Malignant neoplasm, primary: 0.87 1"), so the class is on the image. TID 300's "Equivalent Meaning
    # of Concept Name" spells out what that name means, for readers that show modifiers.
    probability = hd.sr.Measurement(
        name=class_concept, value=_unit_interval("probability", finding.probability), unit=coding.UNITLESS
    )
    probability[0].ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=codes.DCM.EquivalentMeaningOfConceptName, value=f"{coding.PROBABILITY.meaning} of {cls.meaning}",
        relationship_type=_HAS_CONCEPT_MOD,
    )])
    tracking = hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id)
    numbers = [
        probability,
        hd.sr.Measurement(
            name=coding.DETECTION_SCORE,
            value=_unit_interval("detection_score", finding.detection_score),
            unit=coding.UNITLESS,
        ),
    ]
    volume: list[_Group] = []
    if finding.volume_box is not None:
        # On the planar group: the long axis is measured on the axial plane through the centre (sr3d.long_axis_mm).
        numbers.append(sr3d.long_axis_measurement(finding))
        volume.append(sr3d.volume_group(finding, source, algorithm, site))
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=coding.FINDING_TYPE,
            algorithm_id=algorithm,
            finding_sites=[site] if site is not None else None,
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(name=coding.CLASSIFICATION, value=class_concept),
                *_input_evaluations(coding.INPUT_USED, finding.inputs_used),
                *_input_evaluations(coding.INPUT_UNAVAILABLE, finding.inputs_missing),
            ],
        ),
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=region,
            finding_type=coding.FINDING_TYPE,
            algorithm_id=algorithm,
            measurements=numbers,
        ),
        *volume,
    ]


def _measurement_report(
    observation_context: hd.sr.ObservationContext,
    groups: Sequence[_Group],
    evaluations: Sequence[hd.sr.QualitativeEvaluation],
) -> hd.sr.MeasurementReport:
    """TID 1500 with Imaging Measurements (row 6) when there are findings and Qualitative Evaluations (row 10) always.

    highdicom's MeasurementReport builds rows 1 to 7 only, and insists on at least one measurement group, where
    TID 1500 asks for at least one of rows 6, 8 and 10 (a no-findings report has nothing to put in row 6). So the
    root is put together here from highdicom's content items, in MeasurementReport's own order, and read back as
    its MeasurementReport. A report without measurements is not titled "Imaging Measurement Report" (see
    ``coding.NOTHING_MEASURED_TITLE``).
    """
    title = codes.cid7021.ImagingMeasurementReport if groups else coding.NOTHING_MEASURED_TITLE
    root = hd.sr.ContainerContentItem(name=title, template_id="1500")
    content: list[hd.sr.ContentItem] = [
        *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
        *observation_context,
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported, value=coding.PROCEDURE_REPORTED, relationship_type=_HAS_CONCEPT_MOD
        ),
    ]
    if groups:
        measurements = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurements, relationship_type=_CONTAINS)
        measurements.ContentSequence = hd.sr.ContentSequence([item for group in groups for item in group])
        content.append(measurements)
    container = hd.sr.ContainerContentItem(name=coding.QUALITATIVE_EVALUATIONS, relationship_type=_CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([item for evaluation in evaluations for item in evaluation])
    content.append(container)
    root.ContentSequence = hd.sr.ContentSequence(content)
    return hd.sr.MeasurementReport.from_sequence([root], copy=False)


def _study_evaluations(
    result: PipelineResult, by_uid: dict[str, Dataset], algorithm: hd.sr.AlgorithmIdentification
) -> list[hd.sr.QualitativeEvaluation]:
    """The study-level statements: lesion present/absent (by which algorithm, under which threshold, from which
    images), the EHR status, the inputs missing and the instances not analysed.

    Always written, so that "nothing found" and "what the AI did not have" are explicit statements, never an
    absence of content a reader has to interpret.
    """
    if result.findings:
        answer = coding.PRESENT
    else:
        answer = coding.ABSENT if result.images_analysed else coding.NOT_EVALUATED
    presence = hd.sr.QualitativeEvaluation(name=coding.PRESENCE, value=answer)
    presence[0].ContentSequence = hd.sr.ContentSequence([
        # Presence of what: of the finding type every box is reported as.
        hd.sr.CodeContentItem(name=codes.DCM.Finding, value=coding.FINDING_TYPE, relationship_type=_HAS_CONCEPT_MOD),
        *algorithm,
        *([hd.sr.NumContentItem(
            name=coding.DETECTION_THRESHOLD,
            value=_unit_interval("detection_threshold", result.detection_threshold),
            unit=coding.UNITLESS,
            relationship_type=_HAS_PROPERTIES,
        )] if result.detection_threshold is not None else []),
        *(
            hd.sr.ImageContentItem(
                name=coding.IMAGE,
                referenced_sop_class_uid=str(by_uid[u].SOPClassUID),
                referenced_sop_instance_uid=u,
                relationship_type=_INFERRED_FROM,
            )
            for u in result.images_analysed
        ),
    ])
    return [
        presence,
        hd.sr.QualitativeEvaluation(name=coding.EHR_STATUS, value=coding.fhir_status_code(result.fhir_status)),
        *_input_evaluations(coding.INPUT_UNAVAILABLE, result.inputs_missing),
        *(_not_analysed(e, by_uid[e.sop_instance_uid]) for e in result.instances_excluded),
    ]


def _not_analysed(excluded: ExcludedInstance, source: Dataset) -> hd.sr.QualitativeEvaluation:
    """"Instance not analysed" = reason, INFERRED FROM the image it is about, with the decoder's words as a property.

    An IMAGE under "Presence of property" says the image was analysed; the one under this evaluation says which
    image the statement is about, so a reader sees both the fact and the instance.
    """
    evaluation = hd.sr.QualitativeEvaluation(
        name=coding.NOT_ANALYSED, value=coding.exclusion_reason_code(excluded.reason)
    )
    about: list[hd.sr.ContentItem] = [
        hd.sr.ImageContentItem(
            name=coding.IMAGE,
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=excluded.sop_instance_uid,
            relationship_type=_INFERRED_FROM,
        )
    ]
    if excluded.detail:
        about.append(hd.sr.TextContentItem(
            name=coding.NOT_ANALYSED_DETAIL, value=excluded.detail, relationship_type=_HAS_PROPERTIES,
        ))
    # highdicom's QualitativeEvaluation takes no children; its one CODE item is a ContentItem like any other.
    evaluation[0].ContentSequence = hd.sr.ContentSequence(about)
    return evaluation


# --- reading back ---------------------------------------------------------------------------------------------


def _is(code: hd.sr.CodedConcept, ref: Code) -> bool:
    return bool(code.value == ref.value and code.scheme_designator == ref.scheme_designator)


# One finding's groups: those with its Tracking Unique Identifier (see _finding_groups).
_Groups = Sequence[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]


def _tokens(groups: _Groups, name: Code) -> tuple[str, ...]:
    return tuple(coding.input_token(_coded(e)) for g in groups for e in g.get_qualitative_evaluations(name=name))


def _coded(evaluation: hd.sr.QualitativeEvaluation) -> hd.sr.CodedConcept:
    # highdicom annotates QualitativeEvaluation.value as a number; it is the CODE item's concept.
    value = evaluation.value
    if not isinstance(value, hd.sr.CodedConcept):
        raise ValueError(f"qualitative evaluation {evaluation.name.meaning!r} has no coded value")
    return value


def _single_value(groups: _Groups, name: Code | hd.sr.CodedConcept) -> float:
    found = [m for g in groups for m in g.get_measurements(name=name)]
    if len(found) != 1:
        raise ValueError(f"finding {groups[0].tracking_identifier!r}: expected one {name.meaning!r}, found {len(found)}")
    return float(found[0].value)


def _single_code(groups: _Groups, name: Code) -> hd.sr.CodedConcept:
    found = [e for g in groups for e in g.get_qualitative_evaluations(name=name)]
    if len(found) != 1:
        raise ValueError(f"finding {groups[0].tracking_identifier!r}: expected one {name.meaning!r}, found {len(found)}")
    return _coded(found[0])


def _one(parent: Dataset, name: Code, where: str) -> Dataset:
    found = hd.sr.utils.find_content_items(parent, name=name)
    if len(found) != 1:
        raise ValueError(f"{where}: expected one {name.meaning!r}, found {len(found)}")
    return found[0]


def _study_statements(report: hd.sr.MeasurementReport) -> Dataset:
    """The report-level Qualitative Evaluations container (TID 1500 row 10)."""
    return _one(report[0], coding.QUALITATIVE_EVALUATIONS, "Measurement Report")


def _region(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> tuple[str, int, tuple[float, ...]]:
    """(SOP Instance UID, frame number, box) of a group's POLYLINE."""
    roi = group.roi
    if not isinstance(roi, hd.sr.ImageRegion) or roi.graphic_type != hd.sr.GraphicTypeValues.POLYLINE:
        raise ValueError(f"group {group.tracking_identifier!r}: expected a 2D POLYLINE image region")
    points = np.asarray(roi.value, dtype=float)
    source = hd.sr.SourceImageForRegion.from_dataset(roi.ContentSequence[0])
    frames = source.referenced_frame_numbers
    box = (float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max()))
    # No Referenced Frame Number means the (single-frame) image as a whole: frame 1.
    return str(source.referenced_sop_instance_uid), frames[0] if frames else 1, box


def _read_finding(
    groups: _Groups, volumes: Sequence[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = ()
) -> FindingSummary:
    """One finding from its TID 1410 groups and, for a 3D finding, its TID 1411 group."""
    first = groups[0]
    regions = {_region(g) for g in groups}
    if len(regions) != 1:
        raise ValueError(f"finding {first.tracking_identifier!r}: its groups disagree on where it is")
    ((sop_instance_uid, frame_number, box),) = regions
    cls = _single_code(groups, coding.CLASSIFICATION)
    finding_type = first.finding_type
    if first.tracking_identifier is None or first.tracking_uid is None:
        raise ValueError("finding group without tracking identifier")
    sites = first.finding_sites
    site, side = (sites[0].value, sites[0].laterality) if sites else (None, None)
    return FindingSummary(
        tracking_id=first.tracking_identifier,
        tracking_uid=str(first.tracking_uid),
        finding_type=finding_type.meaning if finding_type is not None else "",
        class_value=cls.value,
        class_scheme=cls.scheme_designator,
        class_meaning=cls.meaning,
        probability=_single_value(groups, cls),
        detection_score=_single_value(groups, coding.DETECTION_SCORE),
        box=(box[0], box[1], box[2], box[3]),
        sop_instance_uid=sop_instance_uid,
        frame_number=frame_number,
        inputs_used=_tokens(groups, coding.INPUT_USED),
        inputs_missing=_tokens(groups, coding.INPUT_UNAVAILABLE),
        finding_site=CodedClass(site.value, site.scheme_designator, site.meaning) if site is not None else None,
        laterality=side_of(side),
        volume_box=sr3d.read_volume_box(volumes[0]) if volumes else None,
        long_axis_mm=sr3d.read_long_axis([m for g in groups for m in g.get_measurements()],
                                         f"finding {first.tracking_identifier!r}"),
    )


def _read_findings(report: hd.sr.MeasurementReport) -> tuple[FindingSummary, ...]:
    by_finding: dict[str, list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]] = {}
    for group in report.get_planar_roi_measurement_groups():
        by_finding.setdefault(str(group.tracking_uid), []).append(group)
    volumes: dict[str, list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]] = {}
    for volume in report.get_volumetric_roi_measurement_groups():
        volumes.setdefault(str(volume.tracking_uid), []).append(volume)
    orphans = sorted(set(volumes) - set(by_finding))
    if orphans:
        raise ValueError(f"volumetric groups without a region on an image (Tracking Unique Identifier {orphans})")
    several = sorted(uid for uid, found in volumes.items() if len(found) > 1)
    if several:
        raise ValueError(f"findings with more than one volumetric group: {several}")
    return tuple(_read_finding(groups, volumes.get(uid, ())) for uid, groups in by_finding.items())


def _read_not_analysed(statements: Dataset) -> tuple[ExcludedInstance, ...]:
    out: list[ExcludedInstance] = []
    for item in hd.sr.utils.find_content_items(statements, name=coding.NOT_ANALYSED):
        children = list(item.get("ContentSequence", []))
        images = [c for c in children if c.ValueType == "IMAGE"]
        texts = [c for c in children if c.ValueType == "TEXT"]
        if len(images) != 1:
            raise ValueError(f"'{coding.NOT_ANALYSED.meaning}' item names {len(images)} images, expected 1")
        out.append(ExcludedInstance(
            sop_instance_uid=str(images[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            reason=coding.exclusion_reason_token(item.value),
            detail=str(texts[0].TextValue) if texts else "",
        ))
    return tuple(out)


def _threshold(presence: Dataset) -> float | None:
    found = hd.sr.utils.find_content_items(presence, name=coding.DETECTION_THRESHOLD)
    if len(found) > 1:
        raise ValueError(f"expected at most one '{coding.DETECTION_THRESHOLD.meaning}', found {len(found)}")
    return float(found[0].value) if found else None


def read_findings(sr: Dataset) -> SrSummary:
    """Read one of our SRs (e.g. from ``highdicom.sr.srread`` or ``pydicom.dcmread``) back into plain values."""
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    report = doc.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")
    statements = _study_statements(report)
    presence = _one(statements, coding.PRESENCE, "Qualitative Evaluations")
    where = f"'{coding.PRESENCE.meaning}'"
    return SrSummary(
        sop_instance_uid=str(doc.SOPInstanceUID),
        study_instance_uid=str(doc.StudyInstanceUID),
        algorithm_name=str(_one(presence, codes.DCM.AlgorithmName, where).value),
        algorithm_version=str(_one(presence, codes.DCM.AlgorithmVersion, where).value),
        findings=_read_findings(report),
        nothing_found=_is(presence.value, coding.ABSENT),
        detection_threshold=_threshold(presence),
        images_analysed=tuple(
            str(i.referenced_sop_instance_uid) for i in hd.sr.utils.find_content_items(presence, value_type="IMAGE")
        ),
        inputs_missing=tuple(
            coding.input_token(i.value)
            for i in hd.sr.utils.find_content_items(statements, name=coding.INPUT_UNAVAILABLE)
        ),
        fhir_status=coding.fhir_status_token(_one(statements, coding.EHR_STATUS, "Qualitative Evaluations").value),
        predecessors=tuple(
            str(instance.ReferencedSOPInstanceUID)
            for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for instance in series.get("ReferencedSOPSequence", [])
        ),
        instances_excluded=_read_not_analysed(statements),
    )
