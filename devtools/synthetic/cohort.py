"""Synthetic bone-lesion cohort: patients with a class, radiographs with lesion boxes, labs, a note, and the oracle.

How a case is made is stated in this package's README (every parameter, and the measured oracle AUCs). In short:
a class per patient (``evidence.PRIOR``); every lesion of the patient has that class; each lesion's image latent,
each lab value and each note sentence is drawn independently given the class (``evidence``); ``phantom`` renders
the latents into lesions on one of five limb anatomies with randomised acquisition. A case is a pure function of
``(seed, index)``: three independent random streams (truth, patient, pixels of image i) keep the truth of a patient
the same whatever is rendered. ``cohort_io`` turns a case into DICOM and FHIR; ``write_cohort`` writes a datalist.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devtools.synthetic.anatomy import ANATOMIES, IMAGE_SIZE, PIXEL_SPACING_MM, Box
from devtools.synthetic.cohort_io import case_datasets, fhir_bundle, study_uid
from devtools.synthetic.evidence import (
    LAB_MODELS,
    LABELS,
    MODALITIES,
    NOTE_SENTENCES,
    draw_image_evidence,
    draw_label,
    draw_labs,
    draw_note_sentences,
    posterior,
)
from devtools.synthetic.phantom import render_image

__all__ = ["BODY_PARTS", "IMAGE_SIZE", "LABELS", "LAB_MODELS", "NOTE_SENTENCES", "Case", "CaseImage", "DemoCase",
           "Demographics", "PatientTruth", "generate_case", "oracle_probabilities", "patient_truth", "write_cohort",
           "write_demo_study"]

BODY_PARTS: tuple[str, ...] = tuple(ANATOMIES)
BODY_PART_WORDS = {"FEMUR": "femur", "TIBIA": "tibia", "HUMERUS": "humerus", "FOREARM": "forearm",
                   "LOWERLEG": "lower leg"}
LESION_COUNTS: tuple[tuple[int, float], ...] = ((0, 0.15), (1, 0.4), (2, 0.3), (3, 0.15))  # per image, not class
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
_TRUTH, _PATIENT, _PIXELS = 0, 1, 2  # the random streams of a case


@dataclass(frozen=True)
class Demographics:
    """Synthetic identity of a patient (never a real person); independent of the class."""

    patient_id: str
    family_name: str
    given_name: str
    birth_date: str  # YYYYMMDD
    sex: str  # "M" or "F"
    study_date: str  # YYYYMMDD
    body_part: str  # DICOM PS3.16 Annex L term, one of BODY_PARTS
    laterality: str  # "L" or "R"


@dataclass(frozen=True)
class CaseImage:
    """One radiograph of a case as stored, with the truth about its lesions (one entry per box)."""

    pixels: np.ndarray  # (rows, cols) uint16, 12 bits used, stored values (MONOCHROME1: dense is dark)
    boxes: tuple[Box, ...]  # (x0, y0, x1, y1) in pixel columns/rows: the lesion's extent
    labels: tuple[str, ...]  # one of LABELS per box (the patient's class)
    view: str  # "AP" or "LAT"
    evidence: tuple[float, ...]  # the image latent z per box
    oracle: tuple[tuple[float, ...], ...]  # p(class | z, labs, note) per box
    photometric: str  # "MONOCHROME1" or "MONOCHROME2"
    window: tuple[float, float]  # Window Center, Window Width of the stored values
    pixel_spacing_mm: float
    marker_box: Box  # the burned-in L/R marker
    field: tuple[int, int, int, int]  # collimated field x0, y0, x1, y1 (exclusive ends)


@dataclass(frozen=True)
class PatientTruth:
    """Everything about a patient except pixels: class, lesion latents per image, labs, note. Cheap to draw."""

    seed: int
    index: int
    demographics: Demographics
    label: str
    evidence: tuple[tuple[float, ...], ...]  # per image, per lesion
    n_clear: int  # the first n_clear lesions of each image are drawn clearly visible
    labs: dict[str, float]
    note: str | None
    pixel_spacing_mm: float

    @property
    def lesion_evidence(self) -> tuple[float, ...]:
        return tuple(z for image in self.evidence for z in image)


@dataclass(frozen=True)
class Case:
    """One synthetic patient with one study: images, lesion truth, labs (LOINC -> value) and a note."""

    seed: int
    index: int
    demographics: Demographics
    images: tuple[CaseImage, ...]
    labs: dict[str, float]
    note: str | None
    label: str  # the patient's class; every lesion has it

    @property
    def worst_label(self) -> str | None:
        """The class of the case's lesions; None when no image has a lesion."""
        return self.label if self.boxes else None

    @property
    def image(self) -> np.ndarray:
        """The first image's pixels (most cases have one image)."""
        return self.images[0].pixels

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(b for im in self.images for b in im.boxes)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for im in self.images for label in im.labels)

    @property
    def lesion_evidence(self) -> tuple[float, ...]:
        return tuple(z for im in self.images for z in im.evidence)


FAMILY = ("Smith", "Jones", "Garcia", "Muller", "Rossi", "Novak", "Silva", "Kim", "Dubois", "Berg")
GIVEN = ("Alex", "Sam", "Robin", "Charlie", "Jamie", "Kai", "Noa", "Toni", "Maxi", "Luca")


def _demographics(rng: np.random.Generator, seed: int, index: int) -> tuple[Demographics, int]:
    age = int(rng.integers(12, 80))
    study_year = 2025
    demographics = Demographics(
        # Unique across cohorts (seeds) too, so demo patients of different seeds can share one FHIR server.
        patient_id=f"SYN-{seed:03d}-{index + 1:04d}",
        family_name=f"Synthetic{FAMILY[int(rng.integers(0, len(FAMILY)))]}",
        given_name=GIVEN[int(rng.integers(0, len(GIVEN)))],
        birth_date=f"{study_year - age}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex="M" if rng.random() < 0.5 else "F",
        study_date=f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        body_part=BODY_PARTS[int(rng.integers(0, len(BODY_PARTS)))],
        laterality="L" if rng.random() < 0.5 else "R",
    )
    return demographics, age


def _note(sentences: tuple[str, ...] | None, demo: Demographics, age: int) -> str | None:
    if sentences is None:
        return None
    sex = "man" if demo.sex == "M" else "woman"
    side = "left" if demo.laterality == "L" else "right"
    opening = f"{age}-year-old {sex} referred for radiographs of the {side} {BODY_PART_WORDS[demo.body_part]}."
    return " ".join([opening, *sentences])


def patient_truth(seed: int, index: int, n_images: int = 1, min_lesions: int = 0) -> PatientTruth:
    """The ``index``-th patient of cohort ``seed`` without pixels: what ``generate_case`` renders."""
    if n_images < 1 or min_lesions < 0:
        raise ValueError(f"n_images must be >= 1 and min_lesions >= 0 (got {n_images}, {min_lesions})")
    truth = np.random.default_rng([seed, index, _TRUTH])
    label = draw_label(truth)
    labs = draw_labs(truth, label)
    sentences = draw_note_sentences(truth, label)
    counts, weights = zip(*LESION_COUNTS)
    evidence = tuple(
        draw_image_evidence(truth, label, max(min_lesions, int(truth.choice(counts, p=weights))))
        for _ in range(n_images)
    )
    patient = np.random.default_rng([seed, index, _PATIENT])
    demographics, age = _demographics(patient, seed, index)
    return PatientTruth(
        seed=seed, index=index, demographics=demographics, label=LABELS[label], evidence=evidence,
        n_clear=min_lesions, labs=labs, note=_note(sentences, demographics, age),
        pixel_spacing_mm=round(float(patient.uniform(*PIXEL_SPACING_MM)), 4),
    )


def oracle_probabilities(case: Case | PatientTruth, use: Iterable[str] = MODALITIES) -> np.ndarray:
    """(n_lesions, 3) true class probabilities of each lesion (in ``case.boxes`` order) given the modalities in
    ``use``: "image" (the lesion's latent), "labs" (the observed labs), "notes" (the note's sentences)."""
    return posterior(case.lesion_evidence, case.labs, case.note, use)


def generate_case(seed: int, index: int, n_images: int = 1, min_lesions: int = 0) -> Case:
    """The ``index``-th synthetic patient of cohort ``seed``; ``min_lesions`` forces that many lesions on every image,
    drawn clearly visible (the demo shows findings on them)."""
    truth = patient_truth(seed, index, n_images, min_lesions)
    demo = truth.demographics
    anatomy = ANATOMIES[demo.body_part]
    oracle = oracle_probabilities(truth)
    views = ("AP", "LAT")
    images, start = [], 0
    for number, evidence in enumerate(truth.evidence):
        view = views[number % 2]
        rng = np.random.default_rng([seed, index, _PIXELS, number])
        rendering = render_image(rng, anatomy, truth.pixel_spacing_mm, view, demo.laterality, evidence,
                                 truth.n_clear)
        rows = oracle[start : start + len(evidence)]
        start += len(evidence)
        images.append(CaseImage(
            pixels=rendering.pixels, boxes=rendering.boxes, labels=(truth.label,) * len(evidence), view=view,
            evidence=evidence, oracle=tuple(tuple(float(p) for p in row) for row in rows),
            photometric=rendering.photometric, window=(rendering.window_center, rendering.window_width),
            pixel_spacing_mm=truth.pixel_spacing_mm, marker_box=rendering.marker_box, field=rendering.field,
        ))
    return Case(seed=seed, index=index, demographics=demo, images=tuple(images), labs=truth.labs, note=truth.note,
                label=truth.label)


@dataclass(frozen=True)
class DemoCase:
    """What ``write_demo_study`` wrote: the files, the identifiers, the FHIR bundle and the truth per image."""

    files: list[Path]
    patient_id: str
    study_instance_uid: str
    fhir_bundle: dict[str, Any]
    truth: list[tuple[Box, str]]
    case: Case


def _write_case(case: Case, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ds in case_datasets(case):
        path = out_dir / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_demo_study(out_dir: Path, seed: int = 7) -> DemoCase:
    """The demo patient: one study of two CR views of a limb, each with at least one clearly visible lesion."""
    case = generate_case(seed, 0, n_images=2, min_lesions=1)
    files = _write_case(case, Path(out_dir))
    return DemoCase(
        files=files,
        patient_id=case.demographics.patient_id,
        study_instance_uid=study_uid(case),
        fhir_bundle=fhir_bundle(case),
        truth=list(zip(case.boxes, case.labels)),
        case=case,
    )


def _split_sizes(n_patients: int, split: Sequence[float]) -> tuple[int, int, int]:
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
        raise ValueError(f"split must be three non-negative fractions (training, validation, test) summing to 1, "
                         f"e.g. {DEFAULT_SPLIT}; got {tuple(split)}")
    n_train = int(round(split[0] * n_patients))
    n_val = min(int(round(split[1] * n_patients)), n_patients - n_train)
    return n_train, n_val, n_patients - n_train - n_val


def write_cohort(out_dir: Path, n_patients: int, seed: int, split: Sequence[float] = DEFAULT_SPLIT,
                 progress: bool = False, only: Sequence[str] | None = None) -> Path:
    """Write ``n_patients`` cases as a site datalist (``pipelines.common.datalist``): ``<out>/<PatientID>/<SOP>.dcm``,
    ``<out>/<PatientID>.fhir.json`` and ``<out>/datalist.json`` with a patient-level training/validation/test split
    (shuffled with the seed), labels as indices into LABELS and each box's oracle row. Returns the datalist's path.

    ``only`` (e.g. ``("test",)``) writes just those lists: the same patients as a full write puts there (the split
    does not depend on it), so the held-out list of a shipped bundle's cohort can be re-made without the rest."""
    from pipelines.common.datalist import SPLITS, DatalistItem, write_datalist

    wanted = tuple(only) if only else SPLITS
    unknown = sorted(set(wanted) - set(SPLITS))
    if unknown:
        raise ValueError(f"only (--only) names lists {', '.join(SPLITS)}, not {', '.join(unknown)}")

    if n_patients < 1:
        raise ValueError(f"n_patients (--n-patients) must be at least 1, got {n_patients}")
    sizes = _split_sizes(n_patients, split)
    order = np.random.default_rng([seed, n_patients, 7919]).permutation(n_patients)
    split_of = {int(i): name for i, name in zip(order, ["training"] * sizes[0] + ["validation"] * sizes[1] +
                                                       ["test"] * sizes[2])}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[DatalistItem]] = {"training": [], "validation": [], "test": []}
    indices: Iterable[int] = range(n_patients)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="patients", unit="patient")
    for index in indices:
        if split_of[index] not in wanted:
            continue
        case = generate_case(seed, index)
        patient_id = case.demographics.patient_id
        files = _write_case(case, out / patient_id)
        fhir = out / f"{patient_id}.fhir.json"
        fhir.write_text(json.dumps(fhir_bundle(case), indent=1))
        for path, image in zip(files, case.images):
            splits[split_of[index]].append(DatalistItem(
                image=path, patient_id=patient_id,
                boxes=np.asarray(image.boxes, dtype=np.float64).reshape(-1, 4),
                labels=np.asarray([LABELS.index(label) for label in image.labels], dtype=np.int64),
                fhir=fhir, oracle=np.asarray(image.oracle, dtype=np.float64).reshape(-1, len(LABELS)),
            ))
    written = "" if wanted == SPLITS else f" (only the {', '.join(wanted)} list{'s' if len(wanted) > 1 else ''} written)"
    description = (f"devtools.synthetic cohort, seed {seed}, {n_patients} patients{written}; split {tuple(split)} by patient; "
                   "oracle = p(class | lesion image latent, observed labs, note) per box (see devtools/synthetic/README.md)")
    return write_datalist(out / "datalist.json", LABELS, splits, name=f"synthetic-bone-seed{seed}",
                          description=description)
