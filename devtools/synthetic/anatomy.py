"""What a limb radiograph shows besides lesions: bones and soft tissue of five anatomies, exposure, scatter and
noise, collimation borders and a burned-in-style L/R marker.

Pure numpy/scipy/PIL, no I/O. Densities are in "MONOCHROME2 units" (high = more attenuation = brighter on a
MONOCHROME2 display); ``phantom`` paints lesions into them and turns them into stored pixel values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

IMAGE_SIZE = 512
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixel columns/rows


@dataclass(frozen=True)
class Anatomy:
    """A limb segment: its bones (shaft diameter and offset of the shaft axis from the limb axis, mm) and the
    half-width of its soft-tissue envelope (mm). ``body_part`` is the DICOM PS3.16 Annex L term."""

    body_part: str
    bones: tuple[tuple[float, float], ...]
    soft_half_width_mm: float


# Adult shaft diameters and limb widths, rounded; two-bone segments show both bones side by side on AP views.
ANATOMIES: dict[str, Anatomy] = {
    "FEMUR": Anatomy("FEMUR", ((28.0, 0.0),), 60.0),
    "TIBIA": Anatomy("TIBIA", ((24.0, 0.0),), 42.0),
    "HUMERUS": Anatomy("HUMERUS", ((22.0, 0.0),), 42.0),
    "FOREARM": Anatomy("FOREARM", ((14.0, -11.0), (13.0, 11.0)), 34.0),  # radius, ulna
    "LOWERLEG": Anatomy("LOWERLEG", ((24.0, -9.0), (12.0, 20.0)), 48.0),  # tibia, fibula
}
PIXEL_SPACING_MM = (0.12, 0.35)  # uniform per study: CR/DX detector pitches, some downsampled exports


@dataclass(frozen=True)
class Bone:
    """One bone as drawn: its axis ``x = axis_x + slope * (y - centre)`` and half-width in pixels."""

    axis_x: float
    slope: float
    half_width: float


@dataclass
class Limb:
    """Density layers of one image before lesions (mutable: ``phantom`` paints lesions into ``bone`` and ``soft``)."""

    background: np.ndarray
    soft: np.ndarray
    bone: np.ndarray
    bone_mask: np.ndarray  # soft-edged, 1 inside a bone's outline
    bones: tuple[Bone, ...]
    bone_level: float  # typical cortical density, the scale of a lesion's rim
    field: tuple[int, int, int, int]  # collimated field x0, y0, x1, y1 (exclusive ends)


def low_frequency(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth unit-variance field with about ``cells`` undulations a side (cheap: cubic zoom of a coarse grid)."""
    coarse = rng.standard_normal((cells + 3, cells + 3))
    field = ndimage.zoom(coarse, ((shape[0] + 2) / cells, (shape[1] + 2) / cells), order=3)
    pad_r, pad_c = (field.shape[0] - shape[0]) // 2, (field.shape[1] - shape[1]) // 2
    field = field[pad_r : pad_r + shape[0], pad_c : pad_c + shape[1]]
    return np.asarray((field - field.mean()) / (field.std() + 1e-9), dtype=np.float64)


def fine_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return np.asarray(field / (field.std() + 1e-9), dtype=np.float64)


def _field(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Collimated field: each side is inset (by 12-70 px) with probability 0.5."""
    inset = [int(rng.integers(12, 71)) if rng.random() < 0.5 else 0 for _ in range(4)]
    return inset[0], inset[1], IMAGE_SIZE - inset[2], IMAGE_SIZE - inset[3]


def draw_limb(rng: np.random.Generator, anatomy: Anatomy, spacing_mm: float, view: str, laterality: str) -> Limb:
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    field = _field(rng)
    limb_x = size / 2 + rng.uniform(-45, 45)
    slope = rng.uniform(-0.12, 0.12)
    side = 1.0 if laterality == "R" else -1.0
    # On a lateral view the two bones of a segment overlap more than on a frontal one.
    spread = 1.0 if view == "AP" else 0.35
    background = 220 + 90 * yy / size + 50 * low_frequency(rng, (size, size), 4)
    soft_half = anatomy.soft_half_width_mm / spacing_mm * rng.uniform(0.85, 1.15)
    limb_dist = (xx - (limb_x + slope * (yy - size / 2))) / soft_half
    soft = rng.uniform(500, 800) * np.sqrt(np.clip(1 - limb_dist**2, 0, None))
    soft *= 1 + 0.05 * low_frequency(rng, (size, size), 8)
    bone = np.zeros((size, size))
    mask = np.zeros((size, size))
    bones = []
    level = rng.uniform(1500, 2200)
    flare_at = size * rng.uniform(-0.1, 1.1)  # metaphyseal widening near one end (or outside the image)
    for diameter_mm, offset_mm in anatomy.bones:
        half = diameter_mm / 2 / spacing_mm * rng.uniform(0.9, 1.1)
        axis_x = limb_x + side * spread * offset_mm / spacing_mm
        width = half * (1 + 0.18 * np.exp(-(((yy - flare_at) / (0.35 * size)) ** 2)))
        dist = (xx - (axis_x + slope * (yy - size / 2))) / width
        inner = rng.uniform(0.55, 0.72)
        shell = np.sqrt(np.clip(1 - dist**2, 0, None)) - 0.85 * np.sqrt(np.clip(inner**2 - dist**2, 0, None))
        texture = 1 + 0.07 * fine_noise(rng, (size, size), rng.uniform(1.5, 4.0))
        bone += level * (diameter_mm / 24) ** 0.5 * shell * texture
        mask = np.maximum(mask, np.clip((1 - np.abs(dist)) * half / 2, 0, 1))
        bones.append(Bone(float(axis_x), float(slope), float(half)))
    return Limb(background, soft, bone, mask, tuple(bones), float(level), field)


def expose(rng: np.random.Generator, density: np.ndarray) -> np.ndarray:
    """Detector signal: heel effect, scatter (a blurred veil that lowers contrast), system blur, exposure-dependent
    quantum noise and electronic noise, then a gain and offset. Each exposure differs."""
    size = density.shape[0]
    yy = np.mgrid[0:size, 0:size][0].astype(np.float64)
    signal = density * (1 + rng.uniform(-0.1, 0.1) * (yy / size - 0.5))
    scatter = rng.uniform(0.05, 0.3)
    coarse = ndimage.zoom(ndimage.gaussian_filter(signal[::4, ::4], 8.0), 4, order=1)
    signal = (1 - scatter) * signal + scatter * coarse
    signal = ndimage.gaussian_filter(signal, rng.uniform(0.6, 1.3))
    exposure = float(np.exp(rng.uniform(np.log(0.35), np.log(2.5))))  # relative dose
    quantum = np.sqrt(np.clip(signal, 0, None)) * 0.9 / np.sqrt(exposure)
    signal = signal + quantum * rng.standard_normal(signal.shape) + rng.uniform(6, 30) * rng.standard_normal(signal.shape)
    return signal * rng.uniform(0.8, 1.2) + rng.uniform(40, 300)


def collimate(rng: np.random.Generator, signal: np.ndarray, field: tuple[int, int, int, int]) -> np.ndarray:
    """Outside the field: unexposed plate (bright, faint noise) or an electronic shutter (flat dark), soft edged."""
    x0, y0, x1, y1 = field
    inside = np.zeros_like(signal)
    inside[y0:y1, x0:x1] = 1.0
    inside = ndimage.gaussian_filter(inside, rng.uniform(0.8, 2.5))
    if rng.random() < 0.5:
        outside = rng.uniform(3300, 3900) + rng.uniform(5, 20) * rng.standard_normal(signal.shape)
    else:
        outside = np.full(signal.shape, rng.uniform(0, 120))
    return np.asarray(inside * signal + (1 - inside) * outside, dtype=np.float64)


def marker(rng: np.random.Generator, signal: np.ndarray, field: tuple[int, int, int, int], letter: str,
           keep_clear: list[Box]) -> Box:
    """Burn a bright lead-marker letter into a corner of the field (away from ``keep_clear`` boxes); its box."""
    x0, y0, x1, y1 = field
    height = int(rng.integers(22, 42))
    font = ImageFont.load_default(size=height)
    stamp = Image.new("L", (2 * height, 2 * height))
    ImageDraw.Draw(stamp).text((height // 4, height // 8), letter, fill=255, font=font)
    glyph = np.asarray(stamp, dtype=np.float64) / 255.0
    rows, cols = np.nonzero(glyph > 0.1)
    glyph = glyph[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    pad = 4
    h, w = glyph.shape[0] + 2 * pad, glyph.shape[1] + 2 * pad
    corners = [(x0 + 8, y0 + 8), (x1 - 8 - w, y0 + 8), (x0 + 8, y1 - 8 - h), (x1 - 8 - w, y1 - 8 - h)]
    order = rng.permutation(4)
    for k in order:
        left, top = corners[int(k)]
        box = (float(left), float(top), float(left + w), float(top + h))
        if not any(_overlap(box, other) for other in keep_clear):
            break
    plate = np.zeros((h, w))
    plate[pad : pad + glyph.shape[0], pad : pad + glyph.shape[1]] = glyph
    plate = ndimage.gaussian_filter(plate, 0.7)
    region = signal[top : top + h, left : left + w]
    region[:] = region * (1 - plate) + plate * rng.uniform(3700, 4050)
    return box


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
