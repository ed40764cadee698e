"""Declarations of the shipped pipelines: requirements and class codes, importable without torch or MONAI.

The registry answers ``pipeline_requirements`` from here so the node can route studies without loading a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from pipelines.base import CodedClass, IntendedUse, LabRequirement, PipelineRequirements, SeriesFilter

RADIOGRAPH_LESION = "radiograph-lesion"
BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"

RADIOGRAPH_LESION_LABS: tuple[LabRequirement, ...] = (
    LabRequirement("6768-6", "alkaline phosphatase", "U/L"),
    LabRequirement("2532-0", "lactate dehydrogenase", "U/L"),
    LabRequirement("17861-6", "calcium", "mg/dL"),
    LabRequirement("1988-5", "C-reactive protein", "mg/L"),
)

# Adult reference intervals in the units of RADIOGRAPH_LESION_LABS, and the short names, that lab sentences use
# ("ALP elevated: 410 U/L, reference 40-130") when a bundle encodes labs as text. Typical adult serum intervals
# (they vary by laboratory and method; a site retraining on its own data should put its laboratory's here).
# LOINC -> (low, high, unit, short name).
RADIOGRAPH_LESION_LAB_REFERENCE: dict[str, tuple[float, float, str, str]] = {
    "6768-6": (40.0, 130.0, "U/L", "ALP"),
    "2532-0": (140.0, 280.0, "U/L", "LDH"),
    "17861-6": (8.6, 10.3, "mg/dL", "Calcium"),
    "1988-5": (0.0, 5.0, "mg/L", "CRP"),
}



def usable_labs(values: Mapping[str, float], units: Mapping[str, str]) -> tuple[dict[str, float], int]:
    """The labs a radiograph-lesion model may read: those of RADIOGRAPH_LESION_LABS given in its unit; and how many
    were left out for another unit (never converted: a value in another unit counts as missing)."""
    wanted = {lab.loinc: lab.unit for lab in RADIOGRAPH_LESION_LABS}
    usable = {k: float(v) for k, v in values.items() if k in wanted and units.get(k) == wanted[k]}
    return usable, sum(1 for k in values if k in wanted and k not in usable)


# What the model is made for; training writes it into the bundle's config.json ("intended_use", with the reasons
# below), the pipeline enforces its bundle's on every image, and the node's default routing follows it.
RADIOGRAPH_LESION_INTENDED_USE = IntendedUse(
    modalities=("CR", "DX"),
    body_parts=(
        "FEMUR", "TIBIA", "HUMERUS",  # the cohort's bones
        "FIBULA", "TIBIAFIBULA", "RADIUS", "ULNA", "RADIUSULNA",  # the other long bones of the limbs
        "THIGH", "LOWERLEG", "UPPERARM", "FOREARM", "UPPERLIMB", "LOWERLIMB", "EXTREMITY",  # limbs and their segments
        "LEG", "ARM",  # not Annex L terms, but what many modalities send for the same
    ),
    views=("AP", "PA", "LAT", "LL", "RL"),
    photometric_interpretations=("MONOCHROME1", "MONOCHROME2"),
    pixel_spacing_mm=(0.05, 0.5),
    min_size=256,
    max_size=4800,
)
RADIOGRAPH_LESION_INTENDED_USE_WHY: dict[str, str] = {
    "modalities": "the cohort is computed radiography; DX shows the same projection",
    "body_parts": "the cohort images the shaft of a long bone of a limb (FEMUR, TIBIA, HUMERUS); the other long "
                  "bones and the limb segments that hold them look alike; joints, hands, feet, spine, chest, skull "
                  "and pelvis do not",
    "views": "frontal (AP, PA) and lateral (LAT, LL, RL) projections, as in the cohort; no obliques or axial views",
    "photometric_interpretations": "grayscale; MONOCHROME1 is inverted like the training pre-processing does",
    "pixel_spacing_mm": "CR/DX detector pitches (about 0.1-0.2 mm) and the cohort's 0.3 mm; outside it the image is "
                        "another kind (mammography, a downsampled export) or its header is wrong",
    "min_size": "the detector's input is 256 pixels a side: a smaller image would be enlarged (a thumbnail)",
    "max_size": "larger than any single-exposure CR/DX detector (43 cm at 0.1 mm is 4300 pixels): a stitched image",
}

RADIOGRAPH_LESION_REQUIREMENTS = PipelineRequirements(
    modalities=RADIOGRAPH_LESION_INTENDED_USE.modalities,
    series_filter=SeriesFilter(),
    labs=RADIOGRAPH_LESION_LABS,
    reads_notes=True,
    dimensionality=2,
    # The synthetic cohort images long bones of the limbs (FEMUR, TIBIA, HUMERUS in devtools/synthetic/cohort.py): the limb is
    # the region the model is made for. (66019005, SCT, "Extremity") is in CID 4031 "Common Anatomic Regions" and is
    # the code PS3.16 Annex L gives Body Part Examined "EXTREMITY" (pydicom codedict: codes.SCT.Extremity).
    anatomy=CodedClass("66019005", "SCT", "Extremity"),
    intended_use=RADIOGRAPH_LESION_INTENDED_USE,
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
