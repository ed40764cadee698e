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
* Labs (per patient, driven by the worst label): alkaline phosphatase (LOINC 6768-6, U/L), LDH (2532-0, U/L),
  calcium (17861-6, mg/dL), CRP (1988-5, mg/L); each missing with probability 0.2. Distributions overlap.
* Note: a short text whose wording depends on the worst label; 15 % of notes borrow a sentence from another
  label and 10 % of patients have no note at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LABELS: tuple[str, ...] = ("benign", "intermediate", "malignant")
IMAGE_SIZE = 512
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
class CaseImage:
    """One radiograph of a case: stored pixel values and the lesions drawn on it."""

    pixels: np.ndarray  # (rows, cols) uint16, 12 bits used
    boxes: tuple[tuple[float, float, float, float], ...]  # (x0, y0, x1, y1) in pixel columns/rows
    labels: tuple[str, ...]  # one of LABELS per box
    view: str  # "AP" or "LAT"


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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return np.asarray(field / (field.std() + 1e-9), dtype=np.float64)


def _bone(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """Background + soft tissue + bone tube; returns the image, the bone mask, the axis (cx, slope), half-width."""
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cx = size / 2 + rng.uniform(-50, 50)
    slope = rng.uniform(-0.12, 0.12)
    half_width = rng.uniform(45, 70) * (1 + 0.15 * np.exp(-(((yy - size * rng.uniform(0, 1)) / 90) ** 2)))
    dist = (xx - (cx + slope * (yy - size / 2))) / half_width
    image = 250 + 80 * yy / size + 60 * _smooth_noise(rng, (size, size), 40)
    soft = np.clip(1 - (dist / 2.3) ** 2, 0, None)
    image += 650 * np.sqrt(soft)
    inner = rng.uniform(0.55, 0.7)
    shell = np.sqrt(np.clip(1 - dist**2, 0, None)) - 0.85 * np.sqrt(np.clip(inner**2 - dist**2, 0, None))
    image += rng.uniform(1700, 2200) * shell * (1 + 0.08 * _smooth_noise(rng, (size, size), 6))
    return image, np.abs(dist) < 1, float(cx), float(slope), float(np.median(half_width))


def _draw_lesion(
    rng: np.random.Generator, image: np.ndarray, label: str, cy: float, cx: float
) -> tuple[float, float, float, float]:
    """Paint one lesion centred at (cy, cx); returns its box (x0, y0, x1, y1)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if label == "benign":
        r = rng.uniform(9, 15)
        ry, rx = r * rng.uniform(1.0, 1.25), r
        rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        inside = 1 / (1 + np.exp((rho - 1) * r / 0.8))
        image *= 1 - 0.45 * inside
        image += rng.uniform(500, 800) * np.exp(-(((rho - 1.0) * r / 1.6) ** 2))
        ext = 1.15
    elif label == "intermediate":
        r = rng.uniform(18, 28)
        ry, rx = r * rng.uniform(1.1, 1.45), r
        rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        inside = 1 / (1 + np.exp((rho - 1) * r / 2.0))
        septa = np.abs(np.sin((xx - cx) / rng.uniform(4, 7) + rng.uniform(0, 6))) < 0.15
        image *= 1 - 0.55 * inside * (1 - 0.5 * septa)
        image += rng.uniform(220, 320) * np.exp(-(((rho - 1.02) * r / 1.4) ** 2))
        image += 300 * np.exp(-(((rho - 1.12) * r / 2.5) ** 2)) * (np.abs(xx - cx) > 0.6 * rx)
        ext = 1.15
    else:
        r = rng.uniform(30, 45)
        ry, rx = r * rng.uniform(1.2, 1.6), r
        rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        inside = 1 / (1 + np.exp((rho - 1) * r / 8.0))
        mottle = np.clip(_smooth_noise(rng, (size, size), 2.0), -2, 2)
        image *= 1 - inside * (0.35 + 0.2 * mottle).clip(0.05, 0.8)
        image += 350 * np.exp(-(rho / 1.3) ** 4)  # soft-tissue mass
        angle = np.arctan2(yy - cy, xx - cx)
        spicules = (np.cos(angle * rng.integers(14, 24)) > 0.8) & (rho > 0.9) & (rho < 1.3)
        image += 250 * spicules * np.exp(-(((rho - 1.1) * r / 6) ** 2))
        ext = 1.2
    return (
        float(max(cx - ext * rx, 0)),
        float(max(cy - ext * ry, 0)),
        float(min(cx + ext * rx, size - 1)),
        float(min(cy + ext * ry, size - 1)),
    )


def _lesion_labels(rng: np.random.Generator, primary: str, n: int) -> list[str]:
    labels = [primary]
    for _ in range(n - 1):
        rank = LABELS.index(primary)
        labels.append(primary if rng.random() < 0.7 else LABELS[int(rng.integers(0, rank + 1))])
    return labels


def _render_image(
    rng: np.random.Generator, primary: str, view: str, min_lesions: int
) -> CaseImage:
    image, _, cx, slope, half_width = _bone(rng)
    n = max(min_lesions, 0 if rng.random() < 0.1 else int(rng.integers(1, 4)))
    labels, boxes, centres = _lesion_labels(rng, primary, n) if n else [], [], []
    placed: list[str] = []
    for label in labels:
        for _ in range(50):
            cy = rng.uniform(70, IMAGE_SIZE - 70)
            cx_lesion = cx + slope * (cy - IMAGE_SIZE / 2) + rng.uniform(-0.4, 0.4) * half_width
            if all(np.hypot(cy - y, cx_lesion - x) > 95 for y, x in centres):
                centres.append((cy, cx_lesion))
                boxes.append(_draw_lesion(rng, image, label, cy, cx_lesion))
                placed.append(label)
                break
    image = ndimage.gaussian_filter(image, 0.8)
    image += rng.normal(0, 22, image.shape) + np.sqrt(np.clip(image, 0, None)) * rng.normal(0, 0.6, image.shape)
    stored = np.clip(image, 0, 4095).astype(np.uint16)
    return CaseImage(pixels=stored, boxes=tuple(boxes), labels=tuple(placed), view=view)


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
        patient_id=f"SYN-{index + 1:04d}",
        family_name=f"Synthetic{FAMILY[int(rng.integers(0, len(FAMILY)))]}",
        given_name=GIVEN[int(rng.integers(0, len(GIVEN)))],
        birth_date=f"{study_year - age}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex="M" if rng.random() < 0.5 else "F",
        study_date=f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        body_part=BODY_PARTS[int(rng.integers(0, len(BODY_PARTS)))],
        laterality="L" if rng.random() < 0.5 else "R",
    )
    views = ("AP", "LAT")
    images = tuple(_render_image(rng, primary, views[i % 2], min_lesions) for i in range(n_images))
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
