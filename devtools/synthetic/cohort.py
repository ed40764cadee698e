"""Synthetic bone-lesion cohort: radiograph-like images, lesion boxes and labels, labs and notes per patient.

Pure numpy, no I/O: ``cohort_io`` turns a :class:`Case` into DICOM files and a FHIR bundle. Nothing here is data
from a real patient; it exists to train and test the ``radiograph-lesion`` pipeline end to end.

How a case is made (all draws from ``numpy.random.default_rng([seed, index])``, so a case is a pure function of
``(seed, index)``):

* Image: 512x512, 12 bits stored in 16. A long bone (femur, tibia or humerus) is a slightly tilted tube whose
  projection has a bright cortex and a darker medulla, inside a soft-tissue envelope, on a smooth background,
  with blur and quantum-like noise.
* Lesions: 1-3 per image (about 10 % of images have none), placed on the bone without overlap. The label sets the
  look: *benign* is small (radius 9-15 px) and well defined, a lucent centre with a sclerotic rim; *intermediate*
  is medium (18-28 px), expansile, lucent with thin septa and a thin rim; *malignant* is large (30-45 px),
  ill defined, permeative (mottled lucency with a wide transition zone) with a soft-tissue mass and spicules.
  A patient has a primary label; extra lesions share it or are less aggressive. The box is the lesion's extent.
  A quarter of lesions are *atypical*: drawn with a neighbouring label's look (benign <-> intermediate <->
  malignant) while keeping their label, so the image alone cannot classify every lesion.
* Labs (per patient, driven by the worst label): alkaline phosphatase (LOINC 6768-6, U/L), LDH (2532-0, U/L),
  calcium (17861-6, mg/dL), CRP (1988-5, mg/L); each missing with probability 0.2. Distributions overlap.
* Note: a short text whose wording depends on the worst label; 15 % of notes borrow a sentence from another
  label and 10 % of patients have no note at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devtools.synthetic.cohort_io import case_datasets, fhir_bundle, study_uid
from devtools.synthetic.phantom import IMAGE_SIZE, LABELS, CaseImage, render_image

__all__ = ["IMAGE_SIZE", "LABELS", "Case", "CaseImage", "DemoCase", "generate_case", "write_cohort", "write_demo_study"]

BODY_PARTS: tuple[str, ...] = ("FEMUR", "TIBIA", "HUMERUS")

# (loinc, display, unit, mean per label, sd per label); CRP is log-normal (mean/sd of ln value).
LAB_MODELS: tuple[tuple[str, str, str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
     (85.0, 140.0, 260.0), (25.0, 45.0, 90.0)),
    ("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma", "U/L",
     (180.0, 230.0, 380.0), (40.0, 60.0, 120.0)),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", (9.4, 9.7, 10.4), (0.4, 0.5, 0.8)),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L",
     (float(np.log(2.0)), float(np.log(6.0)), float(np.log(20.0))), (0.7, 0.7, 0.7)),
)
LAB_MISSING_PROBABILITY = 0.2

NOTE_SENTENCES: dict[str, tuple[str, ...]] = {
    "benign": (
        "Incidental finding, patient asymptomatic.",
        "No night pain, no weight loss.",
        "Long-standing painless lump, unchanged for years.",
        "Follow-up of a known lesion, reported as stable.",
        "Minor knock during sport, otherwise well.",
    ),
    "intermediate": (
        "Intermittent dull ache for several months.",
        "Mild swelling with activity-related pain.",
        "Lesion slowly enlarging compared with prior imaging.",
        "Occasional pain relieved by simple analgesia.",
        "Local tenderness on examination, no systemic symptoms.",
    ),
    "malignant": (
        "Progressive pain at rest, waking at night.",
        "Rapidly growing palpable mass over weeks.",
        "Unintentional weight loss and fatigue.",
        "Warm, firm swelling with restricted movement.",
        "Night sweats and constant deep bone pain.",
    ),
}


@dataclass(frozen=True)
class Demographics:
    """Synthetic identity of a patient (never a real person)."""

    patient_id: str
    family_name: str
    given_name: str
    birth_date: str  # YYYYMMDD
    sex: str  # "M" or "F"
    study_date: str  # YYYYMMDD
    body_part: str
    laterality: str  # "L" or "R"


@dataclass(frozen=True)
class Case:
    """One synthetic patient with one study: images, lesion truth, labs (LOINC -> value) and a note."""

    seed: int
    index: int
    demographics: Demographics
    images: tuple[CaseImage, ...]
    labs: dict[str, float]
    note: str | None
    worst_label: str | None  # None when no image has a lesion

    @property
    def image(self) -> np.ndarray:
        """The first image's pixels (most cases have one image)."""
        return self.images[0].pixels

    @property
    def boxes(self) -> tuple[tuple[float, float, float, float], ...]:
        return tuple(b for im in self.images for b in im.boxes)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for im in self.images for label in im.labels)


def _labs(rng: np.random.Generator, worst: str | None) -> dict[str, float]:
    rank = LABELS.index(worst) if worst is not None else 0
    labs: dict[str, float] = {}
    for loinc, _, _, means, sds in LAB_MODELS:
        if rng.random() < LAB_MISSING_PROBABILITY:
            continue
        value = rng.normal(means[rank], sds[rank])
        value = float(np.exp(value)) if loinc == "1988-5" else float(max(value, 0.2 * means[0]))
        labs[loinc] = round(value, 1)
    return labs


def _note(rng: np.random.Generator, worst: str | None, demo: Demographics, age: int) -> str | None:
    if rng.random() < 0.1:
        return None
    label = worst or "benign"
    sentences = list(rng.choice(NOTE_SENTENCES[label], size=2, replace=False))
    if rng.random() < 0.15:
        other = [lab for lab in LABELS if lab != label][int(rng.integers(0, 2))]
        sentences[1] = str(rng.choice(NOTE_SENTENCES[other]))
    sex = "man" if demo.sex == "M" else "woman"
    side = "left" if demo.laterality == "L" else "right"
    opening = f"{age}-year-old {sex} referred for radiographs of the {side} {demo.body_part.lower()}."
    return " ".join([opening, *sentences])


FAMILY = ("Smith", "Jones", "Garcia", "Muller", "Rossi", "Novak", "Silva", "Kim", "Dubois", "Berg")
GIVEN = ("Alex", "Sam", "Robin", "Charlie", "Jamie", "Kai", "Noa", "Toni", "Maxi", "Luca")


def generate_case(seed: int, index: int, n_images: int = 1, min_lesions: int = 0) -> Case:
    """The ``index``-th synthetic patient of cohort ``seed``; ``min_lesions`` forces lesions on every image."""
    rng = np.random.default_rng([seed, index])
    primary = LABELS[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
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
    views = ("AP", "LAT")
    images = tuple(render_image(rng, primary, views[i % 2], min_lesions) for i in range(n_images))
    present = [LABELS.index(label) for im in images for label in im.labels]
    worst = LABELS[max(present)] if present else None
    return Case(
        seed=seed,
        index=index,
        demographics=demographics,
        images=images,
        labs=_labs(rng, worst),
        note=_note(rng, worst, demographics, age),
        worst_label=worst,
    )


@dataclass(frozen=True)
class DemoCase:
    """What ``write_demo_study`` wrote: the files, the identifiers, the FHIR bundle and the truth per image."""

    files: list[Path]
    patient_id: str
    study_instance_uid: str
    fhir_bundle: dict[str, Any]
    truth: list[tuple[tuple[float, float, float, float], str]]
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
    """The demo patient: one study of two CR views of a bone, each with at least one clear lesion."""
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


def write_cohort(out_dir: Path, n_patients: int, seed: int) -> list[DemoCase]:
    """``n_patients`` studies under ``out_dir/<PatientID>/`` plus ``<PatientID>.fhir.json`` bundles."""
    import json

    written = []
    for index in range(n_patients):
        case = generate_case(seed, index)
        folder = Path(out_dir) / case.demographics.patient_id
        files = _write_case(case, folder)
        bundle = fhir_bundle(case)
        (Path(out_dir) / f"{case.demographics.patient_id}.fhir.json").write_text(json.dumps(bundle, indent=1))
        written.append(
            DemoCase(files, case.demographics.patient_id, study_uid(case), bundle, list(zip(case.boxes, case.labels)), case)
        )
    return written
