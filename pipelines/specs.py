"""Declarations of the shipped pipelines: requirements and class codes, importable without torch or MONAI.

The registry answers ``pipeline_requirements`` from here so the node can route studies without loading a model.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.base import CodedClass, LabRequirement, PipelineRequirements, SeriesFilter

RADIOGRAPH_LESION = "radiograph-lesion"
BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"

RADIOGRAPH_LESION_LABS: tuple[LabRequirement, ...] = (
    LabRequirement("6768-6", "alkaline phosphatase", "U/L"),
    LabRequirement("2532-0", "lactate dehydrogenase", "U/L"),
    LabRequirement("17861-6", "calcium", "mg/dL"),
    LabRequirement("1988-5", "C-reactive protein", "mg/L"),
)

RADIOGRAPH_LESION_REQUIREMENTS = PipelineRequirements(
    modalities=("CR", "DX"),
    series_filter=SeriesFilter(),
    labs=RADIOGRAPH_LESION_LABS,
    reads_notes=True,
    dimensionality=2,
)

# Stage-2 classes, in the head's output order. SNOMED CT morphologic abnormalities where we could verify the code:
# 3898006 "Neoplasm, benign" and 86049000 "Malignant neoplasm, primary" (the latter is in pydicom's SCT codedict).
# We could not verify the SCT code for "Neoplasm, uncertain whether benign or malignant" offline, so the
# intermediate class is a project-private code in the node's local scheme (declared by the SR writer).
RADIOGRAPH_LESION_CLASSES: tuple[CodedClass, ...] = (
    CodedClass("3898006", "SCT", "Neoplasm, benign"),
    CodedClass("AIN100", "99AINODE", "Neoplasm of intermediate (uncertain) behaviour"),
    CodedClass("86049000", "SCT", "Malignant neoplasm, primary"),
)

REQUIREMENTS: dict[str, PipelineRequirements] = {RADIOGRAPH_LESION: RADIOGRAPH_LESION_REQUIREMENTS}
