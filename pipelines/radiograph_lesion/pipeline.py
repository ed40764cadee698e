"""The ``radiograph-lesion`` pipeline: detect lesions on each CR/DX frame, then classify each with labs and notes.

Pure: reads the study's files and the clinical context it is handed, returns a PipelineResult; writes nothing.
An image is left out with its reason (``instances_excluded``) when it cannot be read or decoded, when its header is
outside the bundle's intended use, or when the out-of-distribution check finds it unlike the training images; the
rest is analysed. The detection threshold is the bundle's, fixed at training time on the validation split, never
lowered here.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from pydicom import dcmread

from pipelines.common import bundle_layout, detect, fuse, imaging, intended_use, ood
from pipelines.base import (
    ClinicalContext,
    CodedClass,
    ExcludedInstance,
    Finding,
    InstanceRef,
    PipelineRequirements,
    PipelineResult,
    PixelBox,
    StudyInput,
    excluded_because,
    missing_inputs,
)
from pipelines.common.bundle import LoadedBundle, load_bundle
from pipelines.radiograph_lesion.spec import BUNDLES_DIR, RADIOGRAPH_LESION, usable_labs

TRACKING_NAMESPACE = uuid.UUID("6b0f3e3c-2a8d-5f51-b7a4-9c2f0d1e4a77")


def tracking_uid(sop_instance_uid: str, frame: int, index: int, version: str) -> str:
    """Deterministic per-lesion UID: a rerun on the same image with the same model gives the same UID."""
    return "2.25." + str(uuid.uuid5(TRACKING_NAMESPACE, f"{sop_instance_uid}|{frame}|{index}|{version}").int)


class RadiographLesionPipeline:
    """Stage 1 MONAI RetinaNet on the whole radiograph, stage 2 fusion head per detected box."""

    def __init__(self, bundle_dir: Path | None = None, device: str = "auto") -> None:
        bundle_dir = bundle_dir or BUNDLES_DIR / RADIOGRAPH_LESION
        self.bundle_dir: Path = bundle_dir
        self.bundle: LoadedBundle = load_bundle(bundle_dir, device)
        config = self.bundle.config
        metadata, _ = bundle_layout.split_config(config)
        # The bundle says what it is called, what it needs and is for, and what its training images looked like: a
        # site's bundle of this implementation under another name runs with no code change.
        self.name: str = str(config["name"])
        self.requirements: PipelineRequirements = bundle_layout.requirements_from_metadata(metadata)
        assert self.requirements.intended_use is not None  # requirements_from_metadata always sets it
        self.intended_use = self.requirements.intended_use
        self.ood: ood.OodReference = ood.load_reference(bundle_dir, config)
        self.version: str = str(config["version"])
        self.threshold: float = float(config["detection_threshold"])
        self.input_size: int = int(config["input_size"])
        self.classes: tuple[CodedClass, ...] = bundle_layout.classes_from_metadata(metadata)
        fusion = self.bundle.fusion_config
        if len(self.classes) != fusion.num_classes:
            raise ValueError(f"{bundle_dir / bundle_layout.METADATA} lists {len(self.classes)} \"classes\" but the "
                             f"head in {bundle_layout.INFERENCE} (fusion.num_classes) has {fusion.num_classes}: "
                             "list one class per output, in the head's order")
        undeclared = sorted(set(fusion.lab_loincs) - {lab.loinc for lab in self.requirements.labs})
        if undeclared:
            raise ValueError(f"{bundle_dir / bundle_layout.METADATA}: \"inputs\".\"labs\" lacks LOINC "
                             f"{', '.join(undeclared)} that the head reads (fusion.lab_loincs): declare each with "
                             "its unit")
        self._notes: fuse.NoteEncoder | None = None

    def self_check(self) -> str:
        """One forward pass of both stages on a blank input of the bundle's sizes: what ``pipelines install`` runs."""
        size, crop = self.input_size, self.bundle.fusion_config.crop_size
        detect.detect(self.bundle.detector, [np.zeros((size, size), dtype=np.float32)], self.bundle.device)
        blank = fuse.prepare_inputs(self.bundle.fusion_config, np.zeros((1, crop, crop), dtype=np.float32), [{}],
                                    [None], None)  # every clinical input missing: no text to encode
        probs = fuse.classify(self.bundle.classifier, blank, self.bundle.device)
        if probs.shape != (1, len(self.classes)) or not np.isclose(float(probs.sum()), 1.0, atol=1e-4):
            raise ValueError(f"the classifier gave probabilities of shape {probs.shape} summing to {probs.sum():.4f}, "
                             f"not one per class ({len(self.classes)}) summing to 1")
        return (f"detector on a {size}x{size} input and classifier on a {crop}x{crop} crop ran on "
                f"{self.bundle.device.type}: {len(self.classes)} class probabilities")

    @property
    def device(self) -> str:
        return self.bundle.device.type

    def _text_encoder(self, labs: dict[str, float], note: str | None) -> fuse.NoteEncoder | None:
        """The sentence model, loaded only when there is text for it to read (a note, or labs as sentences)."""
        if self._notes is None and fuse.needs_text_encoder(self.bundle.fusion_config, [labs], [note]):
            self._notes = fuse.NoteEncoder(self.device)
        return self._notes

    def _labs(self, context: ClinicalContext) -> dict[str, float]:
        """Lab values usable as-is: status ok and the unit the model was trained on (no silent conversion)."""
        if context.fhir_status != "ok":
            return {}
        return usable_labs({k: v.value for k, v in context.labs.items()}, {k: v.unit for k, v in context.labs.items()},
                           self.requirements.labs)[0]

    def _admit(self, instance: InstanceRef, excluded: list[ExcludedInstance]) -> list[imaging.PreparedImage] | None:
        """The instance's frames ready for the detector, or None after adding to ``excluded`` why it is left out:
        unreadable, outside the intended use (header only: nothing decoded), undecodable, or out of distribution."""
        uid = instance.sop_instance_uid
        try:
            ds = dcmread(instance.path)
        except Exception as exc:  # pydicom raises many types for a file it cannot parse
            excluded.append(excluded_because(uid, "unreadable", exc))
            return None
        problem = intended_use.header_problem(ds, self.intended_use)
        if problem is not None:
            excluded.append(ExcludedInstance(uid, "outside-intended-use", problem))
            return None
        try:
            ds.pixel_array  # decoded here, once: pydicom keeps the array for prepare_dataset
        except Exception as exc:  # every decoder raises its own types
            excluded.append(excluded_because(uid, "undecodable", exc))
            return None
        frames = [imaging.prepare_dataset(ds, self.input_size, frame)
                  for frame in range(1, int(getattr(ds, "NumberOfFrames", 1) or 1) + 1)]
        features = ood.pooled_features(self.bundle.detector.network, [f.model_input for f in frames], self.bundle.device)
        distances = self.ood.distances(features)
        worst = int(distances.argmax())
        if distances[worst] > self.ood.threshold:
            where = f"frame {worst + 1}: " if len(frames) > 1 else ""
            detail = where + self.ood.detail(float(distances[worst]))
            excluded.append(ExcludedInstance(uid, "out-of-distribution", detail))
            return None
        return frames

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        labs = self._labs(context)
        missing = list(missing_inputs(self.requirements, context))
        missing += [f"labs:{lab.loinc}" for lab in self.requirements.labs
                    if lab.loinc in context.labs and lab.loinc not in labs and "labs" not in missing]
        notes = context.notes if context.fhir_status == "ok" else ()
        note = " ".join(n.strip() for n in notes if n.strip()) or None
        trained_on = self.bundle.fusion_config.inputs  # a bundle trained without an input never sees it
        if "labs" not in trained_on:
            labs = {}
        if "notes" not in trained_on:
            note = None
        used = ["image", *(f"labs:{lab.loinc}" for lab in self.requirements.labs if lab.loinc in labs)]
        if note is not None:
            used.append("notes")

        findings: list[Finding] = []
        analysed: list[str] = []
        excluded: list[ExcludedInstance] = []
        for instance in study.instances:
            frames = self._admit(instance, excluded)
            if frames is None:
                continue
            analysed.append(instance.sop_instance_uid)
            for frame, prepared in enumerate(frames, start=1):
                found = detect.detect(self.bundle.detector, [prepared.model_input], self.bundle.device)[0]
                kept = [(imaging.box_to_source(b, prepared), s) for b, s in found if s >= self.threshold]
                kept = [(b, s) for b, s in kept if b[2] - b[0] >= 1 and b[3] - b[1] >= 1]
                if not kept:
                    continue
                size = self.bundle.fusion_config.crop_size
                crops = np.stack([imaging.crop(prepared.native, b, size) for b, _ in kept])
                n = len(kept)
                inputs = fuse.prepare_inputs(self.bundle.fusion_config, crops, [labs] * n, [note] * n,
                                             self._text_encoder(labs, note))
                probs = fuse.classify(self.bundle.classifier, inputs, self.bundle.device)
                for (box, score), p in zip(kept, probs):
                    number = len(findings) + 1
                    best = int(np.argmax(p))
                    findings.append(
                        Finding(
                            tracking_uid=tracking_uid(instance.sop_instance_uid, frame, number, self.version),
                            tracking_id=f"lesion {number}",
                            class_code=self.classes[best],
                            probability=float(p[best]),
                            class_probabilities={c.meaning: float(q) for c, q in zip(self.classes, p)},
                            detection_score=float(score),
                            sop_instance_uid=instance.sop_instance_uid,
                            sop_class_uid=instance.sop_class_uid,
                            frame_number=frame,
                            box=PixelBox(*box),
                            inputs_used=tuple(used),
                            inputs_missing=tuple(missing),
                        )
                    )
        return PipelineResult(
            pipeline_name=self.name,
            pipeline_version=self.version,
            findings=tuple(findings),
            images_analysed=tuple(analysed),
            detection_threshold=self.threshold,
            inputs_missing=tuple(missing),
            fhir_status=context.fhir_status,
            device=self.device,
            instances_excluded=tuple(excluded),
        )
