"""Radiograph phantom: a long bone on soft tissue with benign, intermediate or malignant-looking lesions drawn in.

Pure numpy/scipy, no I/O; ``cohort`` decides labels and patients, this module only paints pixels and boxes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LABELS: tuple[str, ...] = ("benign", "intermediate", "malignant")
IMAGE_SIZE = 512
ATYPICAL = 0.25  # fraction of lesions drawn with a neighbouring label's appearance


@dataclass(frozen=True)
class CaseImage:
    """One radiograph of a case: stored pixel values and the lesions drawn on it."""

    pixels: np.ndarray  # (rows, cols) uint16, 12 bits used
    boxes: tuple[tuple[float, float, float, float], ...]  # (x0, y0, x1, y1) in pixel columns/rows
    labels: tuple[str, ...]  # one of LABELS per box
    view: str  # "AP" or "LAT"


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


def _appearance(rng: np.random.Generator, label: str) -> str:
    """The look a lesion is drawn with: its label's, or (probability ATYPICAL) a neighbouring label's.

    Atypical lesions are why the labs and the note matter: the image alone cannot resolve them.
    """
    if rng.random() >= ATYPICAL:
        return label
    rank = LABELS.index(label)
    neighbours = [r for r in (rank - 1, rank + 1) if 0 <= r < len(LABELS)]
    return LABELS[neighbours[int(rng.integers(0, len(neighbours)))]]


def _lesion_labels(rng: np.random.Generator, primary: str, n: int) -> list[str]:
    labels = [primary]
    for _ in range(n - 1):
        rank = LABELS.index(primary)
        labels.append(primary if rng.random() < 0.7 else LABELS[int(rng.integers(0, rank + 1))])
    return labels


def render_image(rng: np.random.Generator, primary: str, view: str, min_lesions: int) -> CaseImage:
    """One radiograph with 0-3 lesions (at least ``min_lesions``) whose labels derive from ``primary``."""
    image, _, cx, slope, half_width = _bone(rng)
    n = max(min_lesions, 0 if rng.random() < 0.1 else int(rng.integers(1, 4)))
    labels = _lesion_labels(rng, primary, n) if n else []
    boxes: list[tuple[float, float, float, float]] = []
    centres: list[tuple[float, float]] = []
    placed: list[str] = []
    for label in labels:
        for _ in range(50):
            cy = rng.uniform(70, IMAGE_SIZE - 70)
            cx_lesion = cx + slope * (cy - IMAGE_SIZE / 2) + rng.uniform(-0.4, 0.4) * half_width
            if all(np.hypot(cy - y, cx_lesion - x) > 95 for y, x in centres):
                centres.append((cy, cx_lesion))
                boxes.append(_draw_lesion(rng, image, _appearance(rng, label), cy, cx_lesion))
                placed.append(label)
                break
    image = ndimage.gaussian_filter(image, 0.8)
    image += rng.normal(0, 22, image.shape) + np.sqrt(np.clip(image, 0, None)) * rng.normal(0, 0.6, image.shape)
    stored = np.clip(image, 0, 4095).astype(np.uint16)
    return CaseImage(pixels=stored, boxes=tuple(boxes), labels=tuple(placed), view=view)
