"""A pipeline's result as one TID 1500 Comprehensive 3D SR in the original study, and reading such an SR back.

Everything is built with highdicom's template classes; this module only maps Findings onto them. It does not pick
UIDs (the caller passes deterministic ones from ``uids``), touch the network, or render pixels (that is ``sc``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from node.results import coding
from node.results.anatomy import finding_site, side_of
from node.results.equipment import algorithm_equipment
from node.results.source_attrs import sanitized
from node.results.uids import derived_uid, device_uid
from pipelines.base import CodedClass, ExcludedInstance, Finding, PipelineResult

SUMMARY_TRACKING_ID = "study summary"


@dataclass(frozen=True)
class FindingSummary:
    """One TID 1410 group of our SR as read back."""

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


@dataclass(frozen=True)
class SrSummary:
    """What our SR says, in the project's vocabulary (what the demo prints and the tests assert on)."""

    sop_instance_uid: str
    study_instance_uid: str
    algorithm_name: str
    algorithm_version: str
    findings: tuple[FindingSummary, ...]
    nothing_found: bool
    detection_threshold: float
    images_analysed: tuple[str, ...]
    inputs_missing: tuple[str, ...]
    fhir_status: str
    predecessors: tuple[str, ...] = ()  # SOP Instance UIDs of the SRs this one amends
    instances_excluded: tuple[ExcludedInstance, ...] = ()  # inputs not analysed, with the reason

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
    """One SR for one pipeline run on one study: a group per finding plus a study-level summary group.

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
        parameters=[f"detection_threshold={result.detection_threshold:g}"],
    )
    observer = device_observer(result.pipeline_name, result.pipeline_version, manufacturer)
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_summary_group(result, by_uid, algorithm, derived_uid(sop_instance_uid, "summary-group"))]
    groups.extend(_finding_group(f, algorithm, finding_site(by_uid[f.sop_instance_uid], anatomy))
                  for f in result.findings)

    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=coding.PROCEDURE_REPORTED,
        imaging_measurements=groups,
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


def _finding_group(
    finding: Finding, algorithm: hd.sr.AlgorithmIdentification, site: hd.sr.FindingSite | None
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
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
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id),
        referenced_region=region,
        finding_type=coding.FINDING_TYPE,
        algorithm_id=algorithm,
        finding_sites=[site] if site is not None else None,
        measurements=[
            hd.sr.Measurement(
                name=coding.PROBABILITY,
                value=_unit_interval("probability", finding.probability),
                unit=coding.UNITLESS,
            ),
            hd.sr.Measurement(
                name=coding.DETECTION_SCORE,
                value=_unit_interval("detection_score", finding.detection_score),
                unit=coding.UNITLESS,
            ),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=coding.CLASSIFICATION,
                value=hd.sr.CodedConcept(value=cls.value, scheme_designator=cls.scheme_designator, meaning=cls.meaning),
            ),
            *_input_evaluations(coding.INPUT_USED, finding.inputs_used),
            *_input_evaluations(coding.INPUT_UNAVAILABLE, finding.inputs_missing),
        ],
    )


def _summary_group(
    result: PipelineResult,
    by_uid: dict[str, Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    tracking_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Image-level TID 1501 group: lesion present/absent over the analysed images, threshold, EHR and inputs.

    Always written, so that "nothing found" and "what the AI did not have" are explicit statements, never an
    absence of content a reader has to interpret.
    """
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=SUMMARY_TRACKING_ID),
        finding_type=coding.FINDING_TYPE,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=coding.DETECTION_THRESHOLD,
                value=_unit_interval("detection_threshold", result.detection_threshold),
                unit=coding.UNITLESS,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=coding.PRESENCE, value=coding.PRESENT if result.findings else coding.ABSENT
            ),
            hd.sr.QualitativeEvaluation(name=coding.EHR_STATUS, value=coding.fhir_status_code(result.fhir_status)),
            *_input_evaluations(coding.INPUT_UNAVAILABLE, result.inputs_missing),
            *(_not_analysed(e, by_uid[e.sop_instance_uid]) for e in result.instances_excluded),
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(by_uid[u]) for u in result.images_analysed
        ]
        or None,
    )


def _not_analysed(excluded: ExcludedInstance, source: Dataset) -> hd.sr.QualitativeEvaluation:
    """"Instance not analysed" = reason, INFERRED FROM the image it is about, with the decoder's words as a property.

    A source image of the group would say the image was analysed; the IMAGE item under the evaluation says which
    one the statement is about, so a reader sees both the fact and the instance.
    """
    evaluation = hd.sr.QualitativeEvaluation(
        name=coding.NOT_ANALYSED, value=coding.exclusion_reason_code(excluded.reason)
    )
    about: list[hd.sr.ContentItem] = [
        hd.sr.ImageContentItem(
            name=coding.IMAGE,
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=excluded.sop_instance_uid,
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
        )
    ]
    if excluded.detail:
        about.append(hd.sr.TextContentItem(
            name=coding.NOT_ANALYSED_DETAIL, value=excluded.detail,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
        ))
    # highdicom's QualitativeEvaluation takes no children; its one CODE item is a ContentItem like any other.
    evaluation[0].ContentSequence = hd.sr.ContentSequence(about)
    return evaluation


# --- reading back ---------------------------------------------------------------------------------------------


def _is(code: hd.sr.CodedConcept, ref: Code) -> bool:
    return bool(code.value == ref.value and code.scheme_designator == ref.scheme_designator)


def _tokens(group: hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
            name: Code) -> tuple[str, ...]:
    return tuple(coding.input_token(_coded(e)) for e in group.get_qualitative_evaluations(name=name))


def _coded(evaluation: hd.sr.QualitativeEvaluation) -> hd.sr.CodedConcept:
    # highdicom annotates QualitativeEvaluation.value as a number; it is the CODE item's concept.
    value = evaluation.value
    if not isinstance(value, hd.sr.CodedConcept):
        raise ValueError(f"qualitative evaluation {evaluation.name.meaning!r} has no coded value")
    return value


def _single_value(
    group: hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
    name: Code,
) -> float:
    found = group.get_measurements(name=name)
    if len(found) != 1:
        raise ValueError(f"group {group.tracking_identifier!r}: expected one {name.meaning!r}, found {len(found)}")
    return float(found[0].value)


def _single_code(
    group: hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
    name: Code,
) -> hd.sr.CodedConcept:
    found = group.get_qualitative_evaluations(name=name)
    if len(found) != 1:
        raise ValueError(f"group {group.tracking_identifier!r}: expected one {name.meaning!r}, found {len(found)}")
    return _coded(found[0])


def _algorithm(report: hd.sr.MeasurementReport) -> tuple[str, str]:
    # highdicom has no accessor for TID 4019 inside a group; find_content_items is its own tree search.
    names = hd.sr.utils.find_content_items(report[0], name=codes.DCM.AlgorithmName, recursive=True)
    versions = hd.sr.utils.find_content_items(report[0], name=codes.DCM.AlgorithmVersion, recursive=True)
    if not names or not versions:
        raise ValueError("SR carries no Algorithm Identification")
    return str(names[0].value), str(versions[0].value)


def _read_finding(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> FindingSummary:
    roi = group.roi
    if not isinstance(roi, hd.sr.ImageRegion) or roi.graphic_type != hd.sr.GraphicTypeValues.POLYLINE:
        raise ValueError(f"group {group.tracking_identifier!r}: expected a 2D POLYLINE image region")
    points = np.asarray(roi.value, dtype=float)
    source = hd.sr.SourceImageForRegion.from_dataset(roi.ContentSequence[0])
    frames = source.referenced_frame_numbers
    cls = _single_code(group, coding.CLASSIFICATION)
    finding_type = group.finding_type
    if group.tracking_identifier is None or group.tracking_uid is None:
        raise ValueError("finding group without tracking identifier")
    sites = group.finding_sites
    site, side = (sites[0].value, sites[0].laterality) if sites else (None, None)
    return FindingSummary(
        tracking_id=group.tracking_identifier,
        tracking_uid=str(group.tracking_uid),
        finding_type=finding_type.meaning if finding_type is not None else "",
        class_value=cls.value,
        class_scheme=cls.scheme_designator,
        class_meaning=cls.meaning,
        probability=_single_value(group, coding.PROBABILITY),
        detection_score=_single_value(group, coding.DETECTION_SCORE),
        box=(
            float(points[:, 0].min()),
            float(points[:, 1].min()),
            float(points[:, 0].max()),
            float(points[:, 1].max()),
        ),
        sop_instance_uid=str(source.referenced_sop_instance_uid),
        # No Referenced Frame Number means the (single-frame) image as a whole: frame 1.
        frame_number=frames[0] if frames else 1,
        inputs_used=_tokens(group, coding.INPUT_USED),
        inputs_missing=_tokens(group, coding.INPUT_UNAVAILABLE),
        finding_site=CodedClass(site.value, site.scheme_designator, site.meaning) if site is not None else None,
        laterality=side_of(side),
    )


def _read_not_analysed(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> tuple[ExcludedInstance, ...]:
    out: list[ExcludedInstance] = []
    # find_content_items, not get_qualitative_evaluations: the latter rebuilds each item without its children.
    for item in hd.sr.utils.find_content_items(group[0], name=coding.NOT_ANALYSED):
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


def read_findings(sr: Dataset) -> SrSummary:
    """Read one of our SRs (e.g. from ``highdicom.sr.srread`` or ``pydicom.dcmread``) back into plain values."""
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr, copy=True)
    report = doc.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")
    summaries = [
        g for g in report.get_image_measurement_groups() if g.tracking_identifier == SUMMARY_TRACKING_ID
    ]
    if len(summaries) != 1:
        raise ValueError(f"expected one '{SUMMARY_TRACKING_ID}' group, found {len(summaries)}")
    summary = summaries[0]
    presence = _single_code(summary, coding.PRESENCE)
    name, version = _algorithm(report)
    return SrSummary(
        sop_instance_uid=str(doc.SOPInstanceUID),
        study_instance_uid=str(doc.StudyInstanceUID),
        algorithm_name=name,
        algorithm_version=version,
        findings=tuple(_read_finding(g) for g in report.get_planar_roi_measurement_groups()),
        nothing_found=_is(presence, coding.ABSENT),
        detection_threshold=_single_value(summary, coding.DETECTION_THRESHOLD),
        images_analysed=tuple(str(s.referenced_sop_instance_uid) for s in summary.source_images),
        inputs_missing=_tokens(summary, coding.INPUT_UNAVAILABLE),
        fhir_status=coding.fhir_status_token(_single_code(summary, coding.EHR_STATUS)),
        predecessors=tuple(
            str(instance.ReferencedSOPInstanceUID)
            for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for instance in series.get("ReferencedSOPSequence", [])
        ),
        instances_excluded=_read_not_analysed(summary),
    )
