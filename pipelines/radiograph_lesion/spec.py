"""What radiograph-lesion training writes into a bundle: requirements, intended use, class codes, MONAI metadata.

Importable without torch or MONAI. At run time the node reads these declarations from each installed bundle's
configs/metadata.json (``pipelines.registry``), so a site's retrained bundle can declare its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from pipelines.base import CodedClass, IntendedUse, LabRequirement, PipelineRequirements, SeriesFilter
from pipelines.common.bundle_layout import INTENDED_USE_STATEMENT

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



def usable_labs(values: Mapping[str, float], units: Mapping[str, str],
                labs: Sequence[LabRequirement] = RADIOGRAPH_LESION_LABS) -> tuple[dict[str, float], int]:
    """The labs a model may read: those of ``labs`` (its bundle's declared labs; by default the shipped bundle's)
    given in their unit; and how many were left out for another unit (never converted: a value in another unit counts
    as missing)."""
    wanted = {lab.loinc: lab.unit for lab in labs}
    usable = {k: float(v) for k, v in values.items() if k in wanted and units.get(k) == wanted[k]}
    return usable, sum(1 for k in values if k in wanted and k not in usable)


# What the model is made for; training writes it into the bundle's metadata ("intended_images", with the reasons
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



def _coded(c: CodedClass) -> dict[str, str]:
    return {"value": c.value, "scheme_designator": c.scheme_designator, "meaning": c.meaning}


def network_data_format(config: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``network_data_format`` of a radiograph-lesion bundle: what each network takes and gives."""
    size, crop = int(config["input_size"]), int(config["fusion"]["crop_size"])
    loincs = list(config["fusion"]["lab_loincs"])
    labels = [str(c.get("label", c["meaning"])) for c in config["classes"]]
    return {
        "inputs": {
            "image": {"type": "image", "format": "magnitude", "modality": "CR/DX", "num_channels": 1,
                      "spatial_shape": [size, size], "dtype": "float32", "value_range": [0, 1],
                      "is_patch_data": False, "channel_def": {"0": "radiograph, windowed, bright = dense, long side "
                                                                   "scaled to the input and zero-padded"}},
            "lesion_crop": {"type": "image", "format": "magnitude", "modality": "CR/DX", "num_channels": 1,
                            "spatial_shape": [crop, crop], "dtype": "float32", "value_range": [0, 1],
                            "is_patch_data": True, "channel_def": {"0": "detected box with a 25 % margin"}},
            "labs": {"type": "tabular", "format": "ln-value z-scores and missing flags", "num_channels": 2 * len(loincs),
                     "dtype": "float32", "channel_def": {str(i): f"LOINC {k}" for i, k in enumerate(loincs)}},
            "note": {"type": "embedding", "format": "all-MiniLM-L6-v2, L2-normalised, and a missing flag",
                     "num_channels": 385, "dtype": "float32"},
        },
        "outputs": {
            "boxes": {"type": "object", "format": "xyxy pixel corners of the model input, score per box",
                      "dtype": "float32", "num_channels": 4, "channel_def": {"0": "lesion"}},
            "class_probabilities": {"type": "probabilities", "format": "classes", "dtype": "float32",
                                    "value_range": [0, 1], "num_channels": len(labels),
                                    "channel_def": {str(i): label for i, label in enumerate(labels)}},
        },
    }


def metadata_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Metadata a radiograph-lesion bundle carries beside what training puts in its config: MONAI's descriptive
    fields and the node's declarations (implementation, inputs, anatomy). A key in the config wins."""
    version = str(config.get("version", "0.0.0"))
    return {
        "pipeline": RADIOGRAPH_LESION,
        "changelog": {version: "trained with dicom-ai-node train (see docs/README.md)"},
        "task": "Detection of bone lesions on radiographs and their classification (benign, intermediate, "
                "malignant) from the image, blood biomarkers and clinical notes",
        "description": "Stage 1: MONAI RetinaNet on the whole radiograph. Stage 2 per detected box: a small MONAI "
                       "ResNet crop embedding fused with lab z-scores and a sentence embedding of the notes.",
        "authors": "dicom-ai-node contributors",
        "copyright": "Copyright (c) dicom-ai-node contributors, Apache-2.0",
        "data_source": "the project's synthetic cohort (devtools/synthetic/cohort.py): phantoms, generated labs "
                       "and notes; no patient data",
        "data_type": "dicom",
        INTENDED_USE_STATEMENT: "Demonstration and automated tests of the DICOM AI node only; NOT for clinical use",
        "references": [],
        "network_data_format": network_data_format(config),
        "inputs": {
            "dimensionality": RADIOGRAPH_LESION_REQUIREMENTS.dimensionality,
            "series_filter": dict(RADIOGRAPH_LESION_REQUIREMENTS.series_filter.patterns),
            "labs": [{"loinc": lab.loinc, "name": lab.name, "unit": lab.unit} for lab in RADIOGRAPH_LESION_LABS
                     if lab.loinc in config["fusion"]["lab_loincs"]],
            "notes": {"reads": RADIOGRAPH_LESION_REQUIREMENTS.reads_notes,
                      "types": "any DocumentReference of the patient dated up to the study, text/plain attachments"},
        },
        "anatomy": None if RADIOGRAPH_LESION_REQUIREMENTS.anatomy is None
        else _coded(RADIOGRAPH_LESION_REQUIREMENTS.anatomy),
    }
