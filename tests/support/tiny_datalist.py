"""A tiny site datalist written from the synthetic generator, for training and evaluation tests.

Each patient is ``generate_case(seed, index, min_lesions=1)``: one CR image (DICOM file), its lesion boxes and labels,
and a FHIR bundle of labs and a note. The synthetic ``write_cohort`` may emit the same layout; tests only need this.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from devtools.synthetic.cohort import LABELS, generate_case
from devtools.synthetic.cohort_io import case_datasets, fhir_bundle
from pipelines.common.datalist import DatalistItem, write_datalist


def write_tiny_datalist(folder: Path, n_train: int = 4, n_val: int = 2, seed: int = 3) -> Path:
    """``folder/datalist.json`` with ``n_train`` training and ``n_val`` validation patients (one image each)."""
    folder.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[DatalistItem]] = {"training": [], "validation": []}
    for index in range(n_train + n_val):
        case = generate_case(seed, index, min_lesions=1)
        patient = case.demographics.patient_id
        (ds,) = case_datasets(case)
        image = folder / patient / f"{ds.SOPInstanceUID}.dcm"
        image.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(image, enforce_file_format=True)
        fhir = folder / f"{patient}.fhir.json"
        fhir.write_text(json.dumps(fhir_bundle(case)))
        item = DatalistItem(image=image, patient_id=patient, boxes=np.asarray(case.images[0].boxes, dtype=np.float64),
                            labels=np.asarray([LABELS.index(label) for label in case.images[0].labels]), fhir=fhir)
        splits["training" if index < n_train else "validation"].append(item)
    return write_datalist(folder / "datalist.json", LABELS, splits, name=f"tiny-synthetic-{seed}")
