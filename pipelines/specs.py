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
    # The synthetic cohort images long bones of the limbs (FEMUR, TIBIA, HUMERUS in pipelines/cohort.py): the limb is
    # the region the model is made for. (66019005, SCT, "Extremity") is in CID 4031 "Common Anatomic Regions" and is
    # the code PS3.16 Annex L gives Body Part Examined "EXTREMITY" (pydicom codedict: codes.SCT.Extremity).
    anatomy=CodedClass("66019005", "SCT", "Extremity"),
)

# Stage-2 classes, in the head's output order: the SNOMED CT morphologic abnormalities that carry ICD-O's behaviour
# codes /0 (benign), /1 (uncertain whether benign or malignant) and /3 (malignant, primary). All three codes and
# their meanings as listed together in HL7's Breast Cancer Data IG value set "MorphologyBehaviorVS"
# (hl7.org/fhir/us/breastcancer/2018Sep/ValueSet-oncology-MorphologyBehaviorVS.html); 86251006 is also the
# morphology of SNOMED International's template "Neoplasm of uncertain behavior of [body structure] (disorder)"
# (IHTSDO snomed-templates). 86049000 is in pydicom's SCT codedict. Meanings are the FSNs without semantic tag.
RADIOGRAPH_LESION_CLASSES: tuple[CodedClass, ...] = (
    CodedClass("3898006", "SCT", "Neoplasm, benign"),
    CodedClass("86251006", "SCT", "Neoplasm, uncertain whether benign or malignant"),
    CodedClass("86049000", "SCT", "Malignant neoplasm, primary"),
)

REQUIREMENTS: dict[str, PipelineRequirements] = {RADIOGRAPH_LESION: RADIOGRAPH_LESION_REQUIREMENTS}
