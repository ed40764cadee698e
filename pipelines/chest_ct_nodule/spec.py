"""What chest-ct-nodule training writes into a bundle: classes, labs, intended use, series criteria, MONAI metadata.

Importable without torch or MONAI; the node reads these declarations back from each bundle's configs/metadata.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.base import CodedClass, DisplayWindow, IntendedUse, LabRequirement, PipelineRequirements, SeriesFilter
from pipelines.common.bundle_layout import INTENDED_USE_STATEMENT

CHEST_CT_NODULE = "chest-ct-nodule"
BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"
LABELS: tuple[str, ...] = ("AIS", "MIA", "IAC")  # the datalist's classes, in the head's output order

# Serum tumour markers, LOINC codes as devtools/synthetic/chest_ct.py LAB_MODELS checks them against laboratory
# catalogues; all in UCUM "ng/mL" (a value in another unit counts as missing, never converted).
CHEST_CT_LABS: tuple[LabRequirement, ...] = (
    LabRequirement("2039-6", "CEA", "ng/mL"),
    LabRequirement("25390-6", "CYFRA 21-1", "ng/mL"),
    LabRequirement("15060-7", "NSE", "ng/mL"),
)
# Typical adult serum upper reference limits (laboratory- and method-dependent): what a lab sentence says when a
# bundle encodes labs as text. LOINC -> (low, high, unit, short name).
CHEST_CT_LAB_REFERENCE: dict[str, tuple[float, float, str, str]] = {
    "2039-6": (0.0, 5.0, "ng/mL", "CEA"),
    "25390-6": (0.0, 3.3, "ng/mL", "CYFRA 21-1"),
    "15060-7": (0.0, 16.3, "ng/mL", "NSE"),
}

# ICD-O-3 morphology codes (DICOM coding scheme designator "ICDO3"), as listed in WHO's ICD-O-3.2 morphology table:
# 8250/2 adenocarcinoma in situ, non-mucinous (the lung's AIS), 8256/3 minimally invasive adenocarcinoma,
# non-mucinous, and 8140/3 adenocarcinoma, NOS, which codes invasive adenocarcinoma here (ICD-O-3.2 has no single
# code for "invasive non-mucinous adenocarcinoma of the lung"; the model card says so).
CHEST_CT_CLASSES: tuple[CodedClass, ...] = (
    CodedClass("8250/2", "ICDO3", "Adenocarcinoma in situ of the lung, non-mucinous"),
    CodedClass("8256/3", "ICDO3", "Minimally invasive adenocarcinoma, non-mucinous"),
    CodedClass("8140/3", "ICDO3", "Adenocarcinoma, NOS"),
)

CHEST_CT_INTENDED_USE = IntendedUse(
    modalities=("CT",),
    body_parts=("CHEST", "LUNG", "THORAX"),
    views=(),
    photometric_interpretations=("MONOCHROME2",),
    pixel_spacing_mm=(0.3, 3.0),
    min_size=96,
    max_size=1024,
)
CHEST_CT_INTENDED_USE_WHY: dict[str, str] = {
    "modalities": "the model reads CT volumes in Hounsfield units",
    "body_parts": "chest CT (Annex L CHEST; LUNG as some scanners send it; THORAX, not an Annex L term, for the "
                  "same); an empty Body Part Examined is accepted and the series checks still apply",
    "views": "axial slices: checked on the series geometry (not-axial), not on View Position",
    "photometric_interpretations": "CT images are MONOCHROME2",
    "pixel_spacing_mm": "diagnostic chest CT has 0.5-1.0 mm pixels; the model reads a 2 mm resampled volume, so "
                        "pixels up to 3 mm (the test phantoms' 2.7 mm) are interpolated rather than refused",
    "min_size": "fewer than 96 pixels a side is a thumbnail or a localizer crop",
    "max_size": "larger than the 512-1024 matrices of CT scanners",
}

# Series selection (pipelines.common.volume.SeriesCriteria fields), declared in configs/inference.json.
SERIES_SELECTION: dict[str, Any] = {"modality": "CT", "min_slices": 16, "spacing_tolerance": 0.10,
                                    "max_gantry_tilt_deg": 1.0, "max_obliquity_deg": 10.0}

CHEST_CT_REQUIREMENTS = PipelineRequirements(
    modalities=CHEST_CT_INTENDED_USE.modalities,
    series_filter=SeriesFilter(),
    labs=CHEST_CT_LABS,
    reads_notes=True,
    dimensionality=3,
    # The code PS3.16 Annex L gives Body Part Examined "CHEST" (highdicom's copy of Table L-1: 816094009 "Chest"),
    # the code node/results/anatomy.py writes for a CHEST image; used when Body Part Examined is empty.
    anatomy=CodedClass("816094009", "SCT", "Chest"),
    intended_use=CHEST_CT_INTENDED_USE,
    # the lung window: ground-glass nodules vanish in a mediastinal window, often a CT series' first
    display_window=DisplayWindow(-600.0, 1500.0, "LUNG"),
)


def _coded(c: CodedClass) -> dict[str, str]:
    return {"value": c.value, "scheme_designator": c.scheme_designator, "meaning": c.meaning}


def classes_section() -> list[dict[str, str]]:
    return [{**_coded(c), "label": label} for c, label in zip(CHEST_CT_CLASSES, LABELS)]


def network_data_format(config: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``network_data_format`` of a chest-ct-nodule bundle."""
    det = config["detector"]
    crop = int(config["fusion"]["crop_size"])
    loincs = list(config["fusion"]["lab_loincs"])
    return {
        "inputs": {
            "image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                      "spatial_shape": "any, after resampling to " + " x ".join(f"{v:g}" for v in det["spacing_mm"])
                                       + " mm (x, y, z: LPS axes)", "dtype": "float32", "value_range": [0, 1],
                      "is_patch_data": False,
                      "channel_def": {"0": f"HU {det['intensity_hu'][0]:g}..{det['intensity_hu'][1]:g} scaled to 0..1"}},
            "nodule_crop": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                            "spatial_shape": [crop, crop, crop], "dtype": "float32", "value_range": [0, 1],
                            "is_patch_data": True, "channel_def": {"0": "cube of the model volume at the box centre"}},
            "labs": {"type": "tabular", "format": "ln-value z-scores and missing flags", "num_channels": 2 * len(loincs),
                     "dtype": "float32", "channel_def": {str(i): f"LOINC {k}" for i, k in enumerate(loincs)}},
            "demographics": {"type": "tabular", "format": "age z-score (65 +- 12 y), male, age missing, sex missing",
                             "num_channels": 4, "dtype": "float32"},
            "note": {"type": "embedding", "format": "all-MiniLM-L6-v2, L2-normalised, and a missing flag",
                     "num_channels": 385, "dtype": "float32"},
        },
        "outputs": {
            "boxes": {"type": "object", "format": "xyzxyz voxel corners of the model volume, score per box",
                      "dtype": "float32", "num_channels": 6, "channel_def": {"0": "nodule"}},
            "class_probabilities": {"type": "probabilities", "format": "classes", "dtype": "float32",
                                    "value_range": [0, 1], "num_channels": len(LABELS),
                                    "channel_def": {str(i): label for i, label in enumerate(LABELS)}},
        },
    }


def metadata_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """MONAI's descriptive fields and the node's declarations of a chest-ct-nodule bundle; a key in the config wins."""
    version = str(config.get("version", "0.0.0"))
    return {
        "pipeline": CHEST_CT_NODULE,
        "changelog": {version: "trained with dicom-ai-node train chest-ct-nodule (see docs/README.md)"},
        "task": "Detection of lung nodules on chest CT and their classification (AIS, MIA, invasive adenocarcinoma) "
                "from the image, tumour markers, age, sex and clinical notes",
        "description": "Stage 1: MONAI RetinaNet (3D, ResNet + FPN) on the resampled CT volume. Stage 2 per detected "
                       "box: a small 3D MONAI ResNet crop embedding fused with marker z-scores, age and sex and a "
                       "sentence embedding of the notes.",
        "authors": "dicom-ai-node contributors",
        "copyright": "Copyright (c) dicom-ai-node contributors, Apache-2.0",
        "data_source": "the project's synthetic chest CT cohort (devtools/synthetic/chest_ct.py): phantoms, generated "
                       "tumour markers and notes; no patient data",
        "data_type": "dicom",
        INTENDED_USE_STATEMENT: "Demonstration and automated tests of the DICOM AI node only; NOT for clinical use",
        "references": ["MONAI model zoo lung_nodule_ct_detection (the 'luna16' detector configuration)"],
        "network_data_format": network_data_format(config),
        "inputs": {
            "dimensionality": CHEST_CT_REQUIREMENTS.dimensionality,
            "series_filter": dict(CHEST_CT_REQUIREMENTS.series_filter.patterns),
            "labs": [{"loinc": lab.loinc, "name": lab.name, "unit": lab.unit} for lab in CHEST_CT_LABS
                     if lab.loinc in config["fusion"]["lab_loincs"]],
            "notes": {"reads": CHEST_CT_REQUIREMENTS.reads_notes,
                      "types": "any DocumentReference of the patient dated up to the study, text/plain attachments"},
            "demographics": ["age", "sex"],
        },
        "anatomy": None if CHEST_CT_REQUIREMENTS.anatomy is None else _coded(CHEST_CT_REQUIREMENTS.anatomy),
        "display_window": {"center": -600.0, "width": 1500.0, "explanation": "LUNG"},
    }
