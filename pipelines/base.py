"""The contract between the node and the pipelines: what a pipeline declares, what it is given, what it returns.

Nothing here imports torch, MONAI or anything from ``node``: the node reads these types at start-up without
loading a model, and pipelines never see networking, the database or the PACS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol


@dataclass(frozen=True)
class CodedClass:
    """A class a stage-2 head can emit, as a code (value, scheme, meaning) the SR writes as-is."""

    value: str
    scheme_designator: str
    meaning: str


@dataclass(frozen=True)
class LabRequirement:
    """A laboratory value a pipeline reads: its LOINC code, a short name for text rendering, the unit it expects."""

    loinc: str
    name: str
    unit: str


@dataclass(frozen=True)
class SeriesFilter:
    """Declarative series selection (regex per DICOM keyword, matched case-sensitively unless the pattern says (?i))."""

    patterns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IntendedUse:
    """The images a model is made for, from its bundle: the node routes by modality and body part, the pipeline
    checks every attribute of each image it is given and leaves out, with the reason, what is outside it.

    Empty ``body_parts`` or ``views`` accept any value; an absent attribute is accepted (the pipeline's own checks,
    out-of-distribution included, still apply). Body parts are PS3.16 Annex L Defined Terms, matched upper-cased.
    """

    modalities: tuple[str, ...]
    body_parts: tuple[str, ...] = ()
    views: tuple[str, ...] = ()  # View Position values
    photometric_interpretations: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
    pixel_spacing_mm: tuple[float, float] = (0.0, float("inf"))  # [low, high], each of row and column spacing
    min_size: int = 1  # Rows and Columns, each
    max_size: int = 65535


@dataclass(frozen=True)
class DisplayWindow:
    """How a pipeline's findings are best seen (a window on the modality values, e.g. HU): the overlays (SC) and
    presentation states use it instead of the image's own first window, which may hide what was found (a
    ground-glass nodule in a mediastinal window)."""

    center: float
    width: float
    explanation: str


@dataclass(frozen=True)
class PipelineRequirements:
    """What a pipeline needs from a study and from the EHR."""

    modalities: tuple[str, ...]
    series_filter: SeriesFilter
    labs: tuple[LabRequirement, ...]
    reads_notes: bool
    dimensionality: int  # 2: per image (radiographs); 3: per volume (CT/MR)
    # The anatomic region the pipeline is made for (a CID 4031 code): the finding site the results state when an
    # image's Body Part Examined is empty or has no standard code.
    anatomy: CodedClass | None = None
    intended_use: IntendedUse | None = None  # None: any image of ``modalities``
    display_window: DisplayWindow | None = None  # None: the image's own VOI (else a robust default)


@dataclass(frozen=True)
class InstanceRef:
    """One stored DICOM instance of the study, as the node hands it to a pipeline (read-only)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str


@dataclass(frozen=True)
class StudyInput:
    """The instances of one study selected for a pipeline, plus the demographics a model may use."""

    study_instance_uid: str
    instances: tuple[InstanceRef, ...]
    patient_age_years: float | None = None
    patient_sex: str | None = None  # "M", "F", "O" or None


@dataclass(frozen=True)
class LabValue:
    """A laboratory result from the EHR: the latest before the study date within the configured window."""

    loinc: str
    value: float
    unit: str
    effective: str  # ISO 8601 date-time as the EHR gave it


@dataclass(frozen=True)
class ClinicalContext:
    """What the EHR said about the patient at the time of the study.

    ``fhir_status`` is "ok" when the FHIR server answered and the patient was found, "patient-not-found" when it
    answered without a matching patient, "unreachable" when it did not answer, and "timeout" when it did not answer
    completely within the node's time budget. Missing values are never imputed here: a pipeline sees which labs are absent and says so in its findings.
    """

    fhir_status: str
    labs: Mapping[str, LabValue] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    detail: str = ""

    @classmethod
    def unavailable(cls, status: str, detail: str = "") -> "ClinicalContext":
        return cls(fhir_status=status, labs={}, notes=(), detail=detail)


@dataclass(frozen=True)
class PixelBox:
    """An axis-aligned box in pixel coordinates of one frame: (column, row) of the top-left and bottom-right corners."""

    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class PatientBox:
    """An axis-aligned box in patient coordinates (DICOM LPS, mm) of one frame of reference: the region of a lesion a
    3D pipeline found in a volume. Minimum corner first."""

    frame_of_reference_uid: str
    x0: float
    y0: float
    z0: float
    x1: float
    y1: float
    z1: float

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0 and self.z1 > self.z0):
            raise ValueError("a PatientBox's maximum corner must exceed its minimum corner on every axis")

    @property
    def centre(self) -> tuple[float, float, float]:
        return ((self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2, (self.z0 + self.z1) / 2)


@dataclass(frozen=True)
class Finding:
    """One lesion: where stage 1 found it and what stage 2 called it.

    The region is always given on an image (``sop_instance_uid``, ``frame_number``, ``box`` in its pixels) so that 2D
    viewers can draw it; a 3D pipeline adds ``volume_box``, the lesion's box in patient coordinates (mm), and gives
    as the image region the box on the slice through the lesion's centre.
    """

    tracking_uid: str
    tracking_id: str  # human-readable, e.g. "lesion 1"
    class_code: CodedClass
    probability: float  # stage-2 probability of class_code
    class_probabilities: Mapping[str, float]  # class meaning -> probability, all classes
    detection_score: float  # stage-1 score
    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int  # 1-based
    box: PixelBox
    inputs_used: tuple[str, ...]  # e.g. ("image", "labs:6768-6", "notes")
    inputs_missing: tuple[str, ...]  # e.g. ("labs:2532-0", "notes")
    volume_box: PatientBox | None = None  # 3D pipelines only


@dataclass(frozen=True)
class ExcludedInstance:
    """An input instance a run could not analyse, and why; the rest of the study is analysed without it."""

    sop_instance_uid: str
    # "undecodable" (its pixel data cannot be decoded), "unreadable" (the file cannot be read), "outside-intended-use"
    # (an attribute outside the pipeline's IntendedUse), "out-of-distribution" (the model's own check: the image is
    # unlike its training images) or "series-unusable" (a 3D pipeline cannot make its series into a volume; the
    # detail starts with the pipelines.common.volume reason code)
    reason: str
    detail: str = ""  # the decoder's words, the attribute and its allowed values, the distance; never identifiers


def exception_words(exc: BaseException, limit: int = 240) -> str:
    """An exception's type and first words on one line (decoders can be wordy, and span lines)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:limit]


def excluded_because(sop_instance_uid: str, reason: str, exc: BaseException) -> ExcludedInstance:
    return ExcludedInstance(sop_instance_uid, reason, exception_words(exc))


@dataclass(frozen=True)
class PipelineResult:
    """All findings of one pipeline run on one study, and what the run had to work with."""

    pipeline_name: str
    pipeline_version: str
    findings: tuple[Finding, ...]
    images_analysed: tuple[str, ...]  # SOP Instance UIDs the detector looked at
    # None only when nothing was analysed and the pipeline never ran (every input undecodable)
    detection_threshold: float | None
    inputs_missing: tuple[str, ...]  # study-level: "labs", "notes", or specific "labs:<loinc>"
    fhir_status: str
    device: str  # "cuda" or "cpu"
    # inputs left out because they could not be read or decoded (their findings cannot exist; the SR lists them)
    instances_excluded: tuple[ExcludedInstance, ...] = ()


class Pipeline(Protocol):
    """A detect-then-classify model. Implementations are pure: typed input in, PipelineResult out."""

    name: str
    version: str
    requirements: PipelineRequirements

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult: ...


def missing_inputs(requirements: PipelineRequirements, context: ClinicalContext) -> tuple[str, ...]:
    """Which declared clinical inputs the context lacks, in the vocabulary of ``Finding.inputs_missing``."""
    missing: list[str] = []
    if context.fhir_status != "ok":
        if requirements.labs:
            missing.append("labs")
        if requirements.reads_notes:
            missing.append("notes")
        return tuple(missing)
    missing.extend(f"labs:{lab.loinc}" for lab in requirements.labs if lab.loinc not in context.labs)
    if requirements.reads_notes and not context.notes:
        missing.append("notes")
    return tuple(missing)

