"""The ``chest-ct-nodule`` pipeline: choose the study's CT series, make it a volume, detect nodules, classify each
with the tumour markers, notes, age and sex.

Pure: reads the study's files and the clinical context it is handed, returns a PipelineResult; writes nothing. An
instance outside the bundle's intended use (header only) is left out with the reason; when no series of the rest can
be made into a volume (too few slices, irregular spacing, missing slices, gantry tilt, mixed stacks, undecodable
pixels...) every one of them is left out with the volume's reason code and words, so the SR says why. A volume
without lung fields (pipelines.chest_ct_nodule.lungs) is left out as out-of-distribution.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import CTImageStorage

from pipelines.base import (
    ClinicalContext,
    CodedClass,
    ExcludedInstance,
    Finding,
    PatientBox,
    PipelineRequirements,
    PipelineResult,
    PixelBox,
    StudyInput,
    excluded_because,
    missing_inputs,
)
from pipelines.common import bundle_layout, intended_use
from pipelines.common.volume import (
    SeriesCriteria, SliceHeader, Volume, VolumeError, load_stack, read_header, select_series, stack_series,
)
from pipelines.chest_ct_nodule import inference
from pipelines.chest_ct_nodule.lungs import lung_field_problem
from pipelines.chest_ct_nodule.spec import BUNDLES_DIR, CHEST_CT_NODULE

TRACKING_NAMESPACE = uuid.UUID("0f7c2a4e-93b1-5d6e-8a2f-4c1b7e9d3a55")

# Volume reason codes -> the ExcludedInstance reason the SR codes (node/results/coding.EXCLUSION_REASON_CODES); the
# detail keeps the volume's own code and words.
EXCLUSION_REASON = {"unreadable": "unreadable", "undecodable": "undecodable", "wrong-modality": "outside-intended-use",
                    "localizer": "outside-intended-use", "derived": "outside-intended-use",
                    "not-axial": "outside-intended-use"}
SERIES_UNUSABLE = "series-unusable"


def exclusion_reason(error: VolumeError) -> str:
    return EXCLUSION_REASON.get(error.reason_code, SERIES_UNUSABLE)


def tracking_uid(series_instance_uid: str, index: int, version: str) -> str:
    """Deterministic per-nodule UID: a rerun on the same series with the same model gives the same UID."""
    return "2.25." + str(uuid.uuid5(TRACKING_NAMESPACE, f"{series_instance_uid}|{index}|{version}").int)


def slice_region(volume: Volume, box: np.ndarray) -> tuple[str, PixelBox]:
    """The source slice through the box's centre (SOP Instance UID) and the box's in-plane extent on it, in that
    slice's pixels (clipped to the slice)."""
    centre = (box[:3] + box[3:]) / 2
    sop = volume.patient_to_source(centre)[0].sop_instance_uid
    stack = volume.stack
    m = stack.direction @ np.diag(stack.spacing)
    corners = np.asarray([[box[0 + 3 * a], box[1 + 3 * b], centre[2]] for a in (0, 1) for b in (0, 1)])
    index = np.linalg.solve(m, (corners - stack.origin).T).T
    columns, rows = stack.slices[0].columns, stack.slices[0].rows
    x0, y0 = np.clip(index[:, 0].min(), 0, columns - 1), np.clip(index[:, 1].min(), 0, rows - 1)
    x1, y1 = np.clip(index[:, 0].max(), 0, columns - 1), np.clip(index[:, 1].max(), 0, rows - 1)
    if x1 - x0 < 1:
        x1 = min(x0 + 1, columns - 1.0)
        x0 = x1 - 1
    if y1 - y0 < 1:
        y1 = min(y0 + 1, rows - 1.0)
        y0 = y1 - 1
    return sop, PixelBox(float(x0), float(y0), float(x1), float(y1))


class ChestCtNodulePipeline:
    """Series -> volume -> 3D RetinaNet -> per-nodule fusion head."""

    def __init__(self, bundle_dir: Path | None = None, device: str = "auto") -> None:
        bundle_dir = bundle_dir or BUNDLES_DIR / CHEST_CT_NODULE
        self.bundle_dir: Path = bundle_dir
        self.bundle: inference.LoadedCtBundle = inference.load_ct_bundle(bundle_dir, device)
        config = self.bundle.config
        metadata, _ = bundle_layout.split_config(config)
        self.name: str = str(config["name"])
        self.version: str = str(config["version"])
        self.requirements: PipelineRequirements = bundle_layout.requirements_from_metadata(metadata)
        assert self.requirements.intended_use is not None  # requirements_from_metadata always sets it
        self.intended_use = self.requirements.intended_use
        self.classes: tuple[CodedClass, ...] = self.bundle.coded_classes
        self.threshold: float = self.bundle.threshold
        self.device: str = self.bundle.device.type
        fusion = self.bundle.fusion_config
        if len(self.classes) != fusion.num_classes:
            raise ValueError(f"{bundle_dir / bundle_layout.METADATA} lists {len(self.classes)} \"classes\" but the "
                             f"head has {fusion.num_classes}: list one class per output, in the head's order")

    def self_check(self) -> str:
        """Both stages on a blank (air) volume of 64^3 model voxels: what ``pipelines install`` runs."""
        import SimpleITK as sitk

        from pipelines.common.volume import Stack

        image = sitk.GetImageFromArray(np.full((64, 64, 64), -1000.0, dtype=np.float32))
        image.SetSpacing(tuple(float(v) for v in self.bundle.detector_config.spacing_mm))
        blank = Volume(image, Stack((), np.zeros(3), np.eye(3), np.asarray(image.GetSpacing())), "")
        boxes, _ = inference.detect_model_volume(self.bundle, blank, all_candidates=True)
        probe = np.asarray([[40.0, 40.0, 40.0, 60.0, 60.0, 60.0]])
        probs = inference.classify_model_volume(self.bundle, blank, probe, {}, None, None, None)
        if probs.shape != (1, len(self.classes)) or not np.isclose(float(probs.sum()), 1.0, atol=1e-4):
            raise ValueError(f"the classifier gave probabilities of shape {probs.shape}, not one per class")
        return (f"detector ({self.bundle.detector_config.configuration}) on a 64^3 volume ({len(boxes)} candidates) "
                f"and classifier on a {self.bundle.fusion_config.crop_size}^3 crop ran on {self.device}")

    def _labs(self, context: ClinicalContext) -> dict[str, float]:
        if context.fhir_status != "ok":
            return {}
        wanted = {lab.loinc: lab.unit for lab in self.requirements.labs}
        return {k: float(v.value) for k, v in context.labs.items() if k in wanted and v.unit == wanted[k]}

    def _admit(self, study: StudyInput, excluded: list[ExcludedInstance]) -> list[SliceHeader]:
        """Headers of the instances inside the intended use; the others go to ``excluded`` with the reason."""
        headers = []
        for instance in study.instances:
            uid = instance.sop_instance_uid
            try:
                ds = dcmread(instance.path, stop_before_pixels=True)
            except Exception as exc:  # pydicom raises many types for a file it cannot parse
                excluded.append(excluded_because(uid, "unreadable", exc))
                continue
            problem = intended_use.header_problem(ds, self.intended_use)
            if problem is not None:
                excluded.append(ExcludedInstance(uid, "outside-intended-use", problem))
                continue
            try:
                headers.append(read_header(instance.path))
            except VolumeError as exc:
                excluded.append(ExcludedInstance(uid, exclusion_reason(exc), str(exc)))
        return headers

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        labs = self._labs(context)
        missing = list(missing_inputs(self.requirements, context))
        missing += [f"labs:{lab.loinc}" for lab in self.requirements.labs
                    if lab.loinc in context.labs and lab.loinc not in labs and "labs" not in missing]
        notes = context.notes if context.fhir_status == "ok" else ()
        note = " ".join(n.strip() for n in notes if n.strip()) or None
        trained_on = self.bundle.fusion_config.inputs
        if "labs" not in trained_on:
            labs = {}
        if "notes" not in trained_on:
            note = None
        used = ["image", *(f"labs:{lab.loinc}" for lab in self.requirements.labs if lab.loinc in labs)]
        if note is not None:
            used.append("notes")

        excluded: list[ExcludedInstance] = []
        headers = self._admit(study, excluded)

        def result(findings: tuple[Finding, ...], analysed: tuple[str, ...], ran: bool) -> PipelineResult:
            return PipelineResult(pipeline_name=self.name, pipeline_version=self.version, findings=findings,
                                  images_analysed=analysed, detection_threshold=self.threshold if ran else None,
                                  inputs_missing=tuple(missing), fhir_status=context.fhir_status, device=self.device,
                                  instances_excluded=tuple(excluded))

        if not headers:
            return result((), (), False)
        try:
            choice = select_series(headers, self.bundle.series_criteria)
        except VolumeError as exc:
            for series_uid, reason in _series_reasons(headers, exc, self.bundle.series_criteria).items():
                excluded.extend(ExcludedInstance(h.sop_instance_uid, exclusion_reason(reason), str(reason))
                                for h in headers if h.series_instance_uid == series_uid)
            return result((), (), False)
        for series_uid, reason in choice.rejected.items():
            if reason.reason_code == "not-selected":
                continue  # a usable series; another one was analysed
            excluded.extend(ExcludedInstance(h.sop_instance_uid, exclusion_reason(reason), str(reason))
                            for h in headers if h.series_instance_uid == series_uid)
        try:
            volume = load_stack(choice.stack, choice.series_instance_uid)
        except VolumeError as exc:
            excluded.extend(ExcludedInstance(h.sop_instance_uid, exclusion_reason(exc), str(exc))
                            for h in choice.stack.slices)
            return result((), (), False)

        mv = inference.model_volume(self.bundle, volume)
        problem = lung_field_problem(mv.array())
        if problem is not None:  # out of distribution: no finding is made on what the model was not made for
            excluded.extend(ExcludedInstance(uid, "out-of-distribution", problem) for uid in volume.sop_instance_uids)
            return result((), (), False)
        boxes, scores = inference.detect_model_volume(self.bundle, mv)
        probs = inference.classify_model_volume(self.bundle, mv, boxes, labs, note, study.patient_age_years,
                                                study.patient_sex)
        findings = []
        for k, (box, score, p) in enumerate(zip(boxes, scores, probs), start=1):
            try:
                sop, pixels = slice_region(volume, box)
            except VolumeError:
                continue  # a box whose centre lies beyond the source slices cannot be shown on one
            best = int(np.argmax(p))
            findings.append(Finding(
                tracking_uid=tracking_uid(volume.series_instance_uid, k, self.version),
                tracking_id=f"nodule {k}",
                class_code=self.classes[best],
                probability=float(p[best]),
                class_probabilities={c.meaning: float(q) for c, q in zip(self.classes, p)},
                detection_score=float(score),
                sop_instance_uid=sop,
                sop_class_uid=str(CTImageStorage),
                frame_number=1,
                box=pixels,
                inputs_used=tuple(used),
                inputs_missing=tuple(missing),
                volume_box=PatientBox(volume.frame_of_reference_uid, *(float(v) for v in box)),
            ))
        return result(tuple(findings), volume.sop_instance_uids, True)


def _series_reasons(headers: list[SliceHeader], error: VolumeError,
                    criteria: SeriesCriteria) -> dict[str, VolumeError]:
    """Why each series failed, when ``select_series`` found none usable (its error gives only a summary): the
    series' own stacking reason, else the summary (image types, modality)."""
    reasons: dict[str, VolumeError] = {}
    for uid in sorted({h.series_instance_uid for h in headers}):
        try:
            stack_series([h for h in headers if h.series_instance_uid == uid], criteria)
            reasons[uid] = error
        except VolumeError as exc:
            reasons[uid] = exc
    return reasons
