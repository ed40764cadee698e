"""Synthetic chest CT cohort: lung-nodule phantoms (AIS / MIA / IAC), tumour markers, a note, and the exact oracle.

The generative model is naive Bayes like the radiograph cohort (``evidence``): a class per patient, then each
nodule's image latent, each tumour marker and each note sentence drawn independently given the class, so the true
class probabilities of a nodule given its latent, the labs and the note are exact. ``render_volume`` draws the
phantom (body, lungs, vessels, airways, nodules) in HU on a CT grid; ``chest_ct_io`` writes DICOM and FHIR.
Every number is stated in this package's README ("Chest CT cohort"). A case is a pure function of (seed, index).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import logsumexp
from scipy.stats import norm

from devtools.synthetic.evidence import LabModel

LABELS: tuple[str, ...] = ("AIS", "MIA", "IAC")  # adenocarcinoma in situ, minimally invasive, invasive
PRIOR: tuple[float, float, float] = (0.3, 0.3, 0.4)
IMAGE_MEANS: tuple[float, float, float] = (-1.2, 0.0, 1.0)
IMAGE_SD = 1.0

# Tumour markers (serum). Codes checked against public laboratory catalogues that print the LOINC code of the test:
#   2039-6 CEA: loinc.org-derived page https://www.healthassure.in/codes/loinc-2039-6-carcinoembryonic-ag-massvol
#           ("Carcinoembryonic Ag [Mass/volume] in Serum or Plasma") and https://mlabs.umich.edu/tests/carcinoembryonic-antigen
#   25390-6 CYFRA 21-1: ARUP test 0081344, component "CYFRA 21-1, Serum" LOINC 25390-6 (ltd.aruplab.com/Tests/Pub/0081344)
#   15060-7 NSE: Mayo Clinic Laboratories "Neuron Specific Enolase, S", result LOINC 15060-7 (catalogues citing Mayo NSE)
# The displays of 25390-6 and 15060-7 follow LOINC's long-name pattern; only the CEA display was seen verbatim.
# Medians in ng/mL (UCUM "ng/mL"); all three rise with invasiveness, CEA most.
LAB_MODELS: tuple[LabModel, ...] = (
    LabModel("2039-6", "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma", "ng/mL",
             (2.2, 2.8, 4.5), (0.5, 0.5, 0.7), 1),
    LabModel("25390-6", "Cytokeratin 19 fragment [Mass/volume] in Serum or Plasma", "ng/mL",
             (1.8, 2.1, 3.2), (0.45, 0.45, 0.6), 1),
    LabModel("15060-7", "Neuron-specific enolase [Mass/volume] in Serum or Plasma", "ng/mL",
             (10.5, 11.0, 12.5), (0.3, 0.3, 0.35), 1),
)
LAB_MISSING_PROBABILITY = 0.2
NOTE_TRUE_POOL_PROBABILITY = 0.55
NOTE_MISSING_PROBABILITY = 0.1
NOTE_SENTENCE_COUNTS: tuple[tuple[int, float], ...] = ((1, 0.3), (2, 0.4), (3, 0.3))
NOTE_SENTENCES: dict[str, tuple[str, ...]] = {
    "AIS": ("Nodule unchanged in size over two years of follow-up.", "Never smoker, no respiratory symptoms.",
            "Found incidentally on a cardiac CT.", "Faint opacity first seen on a scan after minor trauma.",
            "No family history of lung cancer.", "Asymptomatic with normal spirometry.",
            "Previous scan described a faint ground-glass focus.", "Referred for surveillance of a subsolid nodule."),
    "MIA": ("Slow growth of the nodule over eighteen months.", "Former smoker, stopped ten years ago.",
            "Mild chronic cough, otherwise well.", "A small solid focus reported as new within the nodule.",
            "Sibling treated for lung cancer.", "Past occupational exposure to mineral dust.",
            "Nodule slightly larger than on the previous scan.", "Referred by the screening programme for review."),
    "IAC": ("Current smoker of forty pack-years.", "Unintentional weight loss over three months.",
            "Haemoptysis on two occasions.", "Nodule clearly enlarging with a growing solid part.",
            "Persistent cough and new breathlessness on exertion.", "Hoarse voice for six weeks.",
            "Fatigue and loss of appetite.", "Enlarged mediastinal node suspected on the previous scan."),
}
_POOL_OF: dict[str, int] = {s: LABELS.index(label) for label, pool in NOTE_SENTENCES.items() for s in pool}
NODULE_COUNTS: tuple[tuple[int, float], ...] = ((0, 0.1), (1, 0.5), (2, 0.3), (3, 0.1))
SLICE_SPACINGS_MM: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5)
FIELD_OF_VIEW_MM = 350.0
DEFAULT_SPLIT = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Grid:
    """The CT grid: ``size`` x ``size`` pixels per slice over FIELD_OF_VIEW_MM, ``n_slices`` slices ``slice_mm``
    apart, head-first supine with axial slices (instance 1 the most superior)."""

    size: int
    n_slices: int
    slice_mm: float

    @property
    def pixel_mm(self) -> float:
        return FIELD_OF_VIEW_MM / self.size

    def x(self) -> np.ndarray:  # L-R (patient left positive), pixel centres, mm
        return (np.arange(self.size) + 0.5) * self.pixel_mm - FIELD_OF_VIEW_MM / 2

    def z(self) -> np.ndarray:  # slice k at the top minus k spacings (superior is +z in LPS)
        return (self.n_slices - 1) / 2 * self.slice_mm - np.arange(self.n_slices) * self.slice_mm


DEFAULT_GRID_SIZE = 512
SMALL_GRID = Grid(128, 64, 2.5)  # for tests: 128 x 128 x 64, 2.73 mm pixels


@dataclass(frozen=True)
class Nodule:
    """One nodule as drawn: its centre (LPS mm), semi-axes (mm), solid part, HU of its ground-glass and solid parts,
    its box (LPS mm: x0, y0, z0, x1, y1, z1), its latent and its oracle row."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    solid_fraction: float  # solid core diameter / nodule diameter, 0 (pure ground glass) to 1 (solid)
    ground_glass_hu: float
    solid_hu: float
    evidence: float
    oracle: tuple[float, float, float]

    @property
    def kind(self) -> str:
        if self.solid_fraction <= 0.0:
            return "ground-glass"
        return "solid" if self.solid_fraction >= 1.0 else "part-solid"

    @property
    def diameter_mm(self) -> float:
        return float(2 * np.mean(self.radii))

    @property
    def box(self) -> tuple[float, float, float, float, float, float]:
        c, r = np.asarray(self.centre), np.asarray(self.radii)
        lo, hi = c - r, c + r
        return (float(lo[0]), float(lo[1]), float(lo[2]), float(hi[0]), float(hi[1]), float(hi[2]))


@dataclass(frozen=True)
class ChestCase:
    """One synthetic patient: class, demographics (independent of the class), labs, note, grid and nodules. The
    pixels are rendered on demand (``render_volume``) since a 512 x 512 series is large."""

    seed: int
    index: int
    label: int
    patient_id: str
    age_years: int
    sex: str  # "M" or "F"
    study_date: str  # YYYYMMDD
    labs: Mapping[str, float]
    note: str | None
    grid: Grid
    nodules: tuple[Nodule, ...]
    noise_hu: float
    body_scale: float  # body and lung size factor (class-independent)


def draw_labs(rng: np.random.Generator, label: int) -> dict[str, float]:
    labs: dict[str, float] = {}
    for lab in LAB_MODELS:
        value = float(np.exp(rng.normal(np.log(lab.medians[label]), lab.log_sds[label])))
        if rng.random() >= LAB_MISSING_PROBABILITY:
            labs[lab.loinc] = max(round(value, lab.decimals), 10.0 ** -lab.decimals)
    return labs


def draw_note(rng: np.random.Generator, label: int, age: int, sex: str) -> str | None:
    counts, weights = zip(*NOTE_SENTENCE_COUNTS)
    n = int(rng.choice(counts, p=weights))
    pools = [label if rng.random() < NOTE_TRUE_POOL_PROBABILITY else (label + int(rng.integers(1, 3))) % 3
             for _ in range(n)]
    chosen: list[str] = []
    for pool in sorted(set(pools)):
        names = NOTE_SENTENCES[LABELS[pool]]
        chosen.extend(names[int(i)] for i in rng.choice(len(names), size=pools.count(pool), replace=False))
    order = rng.permutation(len(chosen))
    if rng.random() < NOTE_MISSING_PROBABILITY:
        return None
    opening = f"{age}-year-old {'man' if sex == 'M' else 'woman'} with a pulmonary nodule on chest CT."
    return " ".join([opening, *(chosen[int(i)] for i in order)])


def posterior(evidence: Sequence[float], labs: Mapping[str, float], note: str | None,
              use: Iterable[str] = ("image", "labs", "notes")) -> np.ndarray:
    """(n, 3): p(y | each nodule's latent, the labs, the note), from the modalities in ``use``."""
    chosen = set(use)
    log_p = np.tile(np.log(np.asarray(PRIOR)), (len(evidence), 1))
    if "image" in chosen:
        z = np.asarray(evidence, dtype=np.float64).reshape(-1, 1)
        log_p += norm.logpdf(z, np.asarray(IMAGE_MEANS)[None, :], IMAGE_SD)
    if "labs" in chosen:
        for lab in LAB_MODELS:
            if lab.loinc in labs:
                log_p += lab.log_likelihood(float(labs[lab.loinc]))[None, :]
    if "notes" in chosen and note:
        q = NOTE_TRUE_POOL_PROBABILITY
        for sentence, pool in _POOL_OF.items():
            if sentence in note:
                log_p += np.asarray(np.where(np.arange(len(LABELS)) == pool, np.log(q), np.log((1 - q) / 2)))[None, :]
    return np.asarray(np.exp(log_p - logsumexp(log_p, axis=1, keepdims=True)), dtype=np.float64)


def _lungs(grid: Grid, scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each lung as (centre, semi-axes) of an ellipsoid, mm."""
    half_z = 0.45 * grid.n_slices * grid.slice_mm
    return [(np.asarray([side * 62.0 * scale, 5.0, 0.0]), np.asarray([50.0 * scale, 80.0 * scale, half_z]))
            for side in (-1.0, 1.0)]


HEART_AXES_MM = np.asarray([55.0, 45.0, 60.0])


def _heart_centre(grid: Grid) -> np.ndarray:
    return np.asarray([15.0, -25.0, -0.3 * 0.45 * grid.n_slices * grid.slice_mm])


def _inside(point: np.ndarray, centre: np.ndarray, axes: np.ndarray) -> float:
    return float(np.sum(((point - centre) / axes) ** 2))


def _draw_nodules(rng: np.random.Generator, evidence: Sequence[float], grid: Grid, scale: float,
                  oracle: np.ndarray) -> tuple[Nodule, ...]:
    lungs = _lungs(grid, scale)
    nodules: list[Nodule] = []
    for z_latent, row in zip(evidence, oracle):
        t = float(norm.cdf(z_latent / 1.3))
        diameter = float(np.clip((5.0 + 20.0 * t) * np.exp(rng.normal(0.0, 0.15)), 4.0, 30.0))
        solid = float(np.clip((t - 0.25) / 0.6, 0.0, 1.0))
        solid = 1.0 if solid >= 0.9 else solid
        radii = diameter / 2 * rng.uniform(0.85, 1.15, size=3)
        radii[2] = max(radii[2], 0.6 * grid.slice_mm)
        ground_glass = float(rng.uniform(-720.0, -450.0))
        solid_hu = float(rng.uniform(0.0, 60.0))
        centre = np.zeros(3)
        for _ in range(60):
            centre_lung, axes = lungs[int(rng.integers(2))]
            candidate = centre_lung + axes * rng.uniform(-0.7, 0.7, size=3)
            clear_of_heart = _inside(candidate, _heart_centre(grid), HEART_AXES_MM + np.max(radii) + 3.0) > 1.0
            if _inside(candidate, centre_lung, axes) < 0.55 and clear_of_heart and all(
                    np.linalg.norm(candidate - np.asarray(n.centre)) > np.max(radii) + max(n.radii) + 5.0
                    for n in nodules):
                centre = candidate
                break
        nodules.append(Nodule(tuple(float(v) for v in centre), tuple(float(v) for v in radii),  # type: ignore[arg-type]
                              solid, ground_glass, solid_hu, float(z_latent),
                              tuple(float(v) for v in row)))  # type: ignore[arg-type]
    return tuple(nodules)


def generate_case(seed: int, index: int, grid: Grid | None = None, min_nodules: int = 0) -> ChestCase:
    """The case ``index`` of cohort ``seed``; ``grid`` None draws the default 512 x 512 grid with a slice spacing of
    SLICE_SPACINGS_MM covering 280 mm (SMALL_GRID makes tests fast). The truth does not depend on the grid."""
    truth = np.random.default_rng([seed, index, 0])
    label = int(truth.choice(len(LABELS), p=PRIOR))
    counts, weights = zip(*NODULE_COUNTS)
    n = max(int(truth.choice(counts, p=weights)), min_nodules)
    evidence = tuple(float(v) for v in truth.normal(IMAGE_MEANS[label], IMAGE_SD, size=n))
    patient = np.random.default_rng([seed, index, 1])
    age = int(patient.integers(45, 86))
    sex = "M" if patient.random() < 0.5 else "F"
    scale = float(patient.uniform(0.88, 1.08))
    noise_hu = float(patient.uniform(10.0, 25.0))
    labs = draw_labs(truth, label)
    note = draw_note(truth, label, age, sex)
    if grid is None:
        spacing = float(patient.choice(SLICE_SPACINGS_MM))
        grid = Grid(DEFAULT_GRID_SIZE, int(round(280.0 / spacing)), spacing)
    oracle = posterior(evidence, labs, note) if n else np.zeros((0, 3))
    pixels = np.random.default_rng([seed, index, 2])
    nodules = _draw_nodules(pixels, evidence, grid, scale, oracle)
    day = 1 + int(patient.integers(0, 365))
    study_date = (np.datetime64("2025-01-01") + np.timedelta64(day - 1, "D")).astype(str).replace("-", "")
    return ChestCase(seed, index, label, f"SCT{seed % 1000:03d}{index + 1:05d}", age, sex, study_date, labs, note,
                     grid, nodules, noise_hu, scale)


def _capsules(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float, radius: float,
              generations: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """A branching tree of tubes (start, end, radius), each child turned by 20-45 deg and 0.7 times as wide."""
    end = start + direction * length
    out = [(start, end, radius)]
    if generations > 1:
        for _ in range(2):
            turn = rng.normal(size=3)
            turn -= turn @ direction * direction
            turn /= np.linalg.norm(turn) + 1e-9
            angle = np.radians(rng.uniform(20.0, 45.0))
            child = np.cos(angle) * direction + np.sin(angle) * turn
            out += _capsules(rng, end, child / np.linalg.norm(child), length * 0.75, radius * 0.7, generations - 1)
    return out


def _tube_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.asarray(np.linalg.norm(points - (a + t[..., None] * ab), axis=-1))


def _paint(hu: np.ndarray, grid: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The (z, y, x) index slices of an LPS box on the grid and the LPS points of its voxels."""
    x, z = grid.x(), grid.z()
    xs = np.flatnonzero((x >= lo[0]) & (x <= hi[0]))
    ys = np.flatnonzero((x >= lo[1]) & (x <= hi[1]))
    zs = np.flatnonzero((z >= lo[2]) & (z <= hi[2]))
    if not (xs.size and ys.size and zs.size):
        return (slice(0, 0),) * 3, np.zeros((0, 0, 0, 3))
    sl = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    zz, yy, xx = np.meshgrid(z[sl[0]], x[sl[1]], x[sl[2]], indexing="ij")
    return sl, np.stack([xx, yy, zz], axis=-1)


def render_volume(case: ChestCase) -> np.ndarray:
    """(z, y, x) HU, float32: body (fat, muscle), two lungs, mediastinum and heart, spine and aorta, vessel and
    airway trees in each lung, the nodules (ground-glass part and solid core, soft edges), blur and noise."""
    grid = case.grid
    rng = np.random.default_rng([case.seed, case.index, 3])
    scale = case.body_scale
    x, z = grid.x(), grid.z()
    yy, xx = np.meshgrid(x, x, indexing="ij")
    hu = np.full((grid.n_slices, grid.size, grid.size), -1000.0, dtype=np.float32)
    lungs = _lungs(grid, scale)
    body_a, body_b = 165.0 * scale, 115.0 * scale
    body = (xx / body_a) ** 2 + (yy / body_b) ** 2
    fat = 1.0 - 14.0 / body_b
    plane = np.where(body < 1.0, np.where(body < fat ** 2, 40.0, -100.0), -1000.0).astype(np.float32)
    plane[(xx ** 2 + (yy - 0.72 * body_b) ** 2) < 16.0 ** 2] = 450.0  # vertebral body
    plane[((xx - 22.0) ** 2 + (yy - 0.5 * body_b) ** 2) < 11.0 ** 2] = 45.0  # descending aorta
    for k, zk in enumerate(z):
        slab = plane.copy()
        for centre, axes in lungs:
            r = ((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2 + ((zk - centre[2]) / axes[2]) ** 2
            slab[r < 1.0] = -860.0
        hc = _heart_centre(grid)
        heart = (((xx - hc[0]) / HEART_AXES_MM[0]) ** 2 + ((yy - hc[1]) / HEART_AXES_MM[1]) ** 2
                 + ((zk - hc[2]) / HEART_AXES_MM[2]) ** 2)
        slab[heart < 1.0] = 40.0
        hu[k] = slab
    lung_mask = hu < -800.0
    trees: list[tuple[np.ndarray, np.ndarray, float, float]] = []  # start, end, radius, lumen HU (vessel: None)
    for side in (-1.0, 1.0):
        hilum = np.asarray([side * 30.0, 0.0, lungs[0][0][2]])
        for heading in ([side * 0.8, 0.3, 0.5], [side * 0.9, -0.3, -0.3], [side * 0.5, 0.6, -0.6]):
            for a, b, r in _capsules(rng, hilum, np.asarray(heading) / np.linalg.norm(heading), 35.0, 4.5, 4):
                trees.append((a, b, r, 40.0))
        for a, b, r in _capsules(rng, hilum, np.asarray([side * 0.7, -0.2, -0.68]) / np.sqrt(0.9424), 30.0, 5.0, 3):
            trees.append((a, b, r, -1000.0))
    for a, b, r, value in trees:
        margin = r + 1.0
        sl, points = _paint(hu, grid, np.minimum(a, b) - margin, np.maximum(a, b) + margin)
        if points.size == 0:
            continue
        d = _tube_distance(points, a, b)
        region, inside = hu[sl], lung_mask[sl]
        if value > 0:
            region[(d < r) & inside] = value
        else:  # airway: a wall of soft tissue around an air lumen
            region[(d < r) & (d >= 0.7 * r) & inside] = -100.0
            region[(d < 0.7 * r) & inside] = value
    for nodule in case.nodules:
        centre, radii = np.asarray(nodule.centre), np.asarray(nodule.radii)
        sl, points = _paint(hu, grid, centre - radii - 2.0, centre + radii + 2.0)
        if points.size == 0:
            continue
        d = np.sqrt(np.sum(((points - centre) / radii) ** 2, axis=-1))
        region = hu[sl]
        edge = 1.5 / float(np.mean(radii))  # a 1.5 mm soft margin
        weight = np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)
        region[...] = region + (nodule.ground_glass_hu - region) * weight * (region < nodule.ground_glass_hu)
        if nodule.solid_fraction > 0:
            core = d / nodule.solid_fraction
            weight = np.clip((1.0 - core) / (edge / nodule.solid_fraction) + 0.5, 0.0, 1.0)
            region[...] = region + (nodule.solid_hu - region) * weight
    out = gaussian_filter(hu, sigma=(0.4, 0.7, 0.7))
    del hu
    out += rng.standard_normal(size=out.shape, dtype=np.float32) * np.float32(case.noise_hu)
    return np.asarray(np.clip(out, -1024.0, 3071.0, out=out), dtype=np.float32)

