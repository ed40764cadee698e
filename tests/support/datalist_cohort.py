"""A small synthetic site datalist on disk (DICOM files, FHIR bundles, datalist.json) for tests of commands that
read one (``evaluate``, ``train --datalist``). Stand-in until the cohort generator writes datalists itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from devtools.synthetic.cohort import LABELS, Case, generate_case
from devtools.synthetic.cohort_io import case_datasets, fhir_bundle
from pipelines.common.datalist import DatalistItem, write_datalist

Oracle = Callable[[Case, np.ndarray], np.ndarray]  # (case, labels of one image) -> (n, K) probabilities


def write_synthetic_datalist(out_dir: Path, splits: Mapping[str, Sequence[int]], seed: int = 0,
                             oracle: Oracle | None = None, min_lesions: int = 1) -> Path:
    """Write the cases ``generate_case(seed, index)`` of each split's indices under ``out_dir`` (one folder per
    patient, ``<patient>.fhir.json`` beside it) and ``out_dir/datalist.json``; returns the datalist's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[DatalistItem]] = {}
    for split, indices in splits.items():
        items = written.setdefault(split, [])
        for index in indices:
            case = generate_case(seed, index, min_lesions=min_lesions)
            patient = case.demographics.patient_id
            folder = out_dir / patient
            folder.mkdir(exist_ok=True)
            fhir = out_dir / f"{patient}.fhir.json"
            fhir.write_text(json.dumps(fhir_bundle(case)))
            for ds, image in zip(case_datasets(case), case.images):
                path = folder / f"{ds.SOPInstanceUID}.dcm"
                ds.save_as(path, enforce_file_format=True)
                labels = np.array([LABELS.index(label) for label in image.labels], dtype=np.int64)
                boxes = np.array(image.boxes, dtype=np.float64).reshape(-1, 4)
                items.append(DatalistItem(path, patient, boxes, labels, fhir,
                                          oracle(case, labels) if oracle is not None else None))
    return write_datalist(out_dir / "datalist.json", LABELS, written, name=f"synthetic-{seed}",
                          description="synthetic cohort (devtools.synthetic), no real patient")
