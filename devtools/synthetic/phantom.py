"""Radiograph phantom: a limb (``anatomy``) with lesions whose look is a monotone function of their image latent.

``render_image`` places and paints the lesions, exposes and collimates the image, burns in the L/R marker and
stores it as MONOCHROME1 or MONOCHROME2 with a window. Pure numpy/scipy, no I/O; ``cohort`` decides classes and
latents (``evidence``), this module only turns them into pixels and boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import erfc, ndtr

from devtools.synthetic.anatomy import (
    IMAGE_SIZE,
    Anatomy,
    Box,
    Limb,
    collimate,
    draw_limb,
    expose,
    fine_noise,
    marker,
)

LATENT_SCALE = 1.3  # t = Phi(z / LATENT_SCALE): the lesion's aggressiveness in (0, 1)


@dataclass(frozen=True)
class Rendering:
    """One radiograph as stored: pixel values (12 of 16 bits), lesion boxes in the order given, the marker's box,
    the collimated field, the photometric interpretation and the VOI window of the stored values."""

    pixels: np.ndarray
    boxes: tuple[Box, ...]
    marker_box: Box
    field: tuple[int, int, int, int]
    photometric: str
    window_center: float
    window_width: float


@dataclass(frozen=True)
class LesionLook:
    """How a lesion is drawn. ``t`` (aggressiveness) sets every class-related feature; ``contrast``, ``aspect`` and
    the size factor are nuisances independent of the class."""

    t: float
    radius: float  # px, across the bone
    aspect: float  # length along the bone / width
    transition: float  # px, width of the zone of transition (sharp margin -> wide)
    lucency: float  # fraction of bone density removed in the centre
    rim: float  # sclerotic rim, fraction of cortical density
    septa: float  # fraction of the lucency that the septa give back
    permeation: float  # amplitude of moth-eaten mottling
    mass: float  # soft-tissue mass density
    spicules: float  # periosteal spicules density
    extent: float  # the lesion's outer edge in units of the ellipse (the box)


def lesion_look(rng: np.random.Generator, evidence: float, spacing_mm: float, bone_half_width: float,
                clear: bool) -> LesionLook:
    """The look of a lesion with latent ``evidence``; ``clear`` lesions are drawn with full contrast and at least
    4.5 mm across-radius (the demo's findings must be visible)."""
    t = float(ndtr(evidence / LATENT_SCALE))
    radius_mm = 3.0 * np.exp(1.1 * t + rng.normal(0, 0.2))
    contrast = float(np.clip(np.exp(rng.normal(np.log(0.7), 0.5)), 0.12, 1.2))
    if clear:
        radius_mm = max(radius_mm, 4.5)
        contrast = rng.uniform(0.95, 1.2)
    radius = float(min(radius_mm / spacing_mm, 0.85 * bone_half_width))
    transition = radius * (0.04 + 0.45 * t**1.5) + 0.7
    mass = contrast * 450 * max(0.0, 2 * t - 1) ** 1.5
    extent = 1 + 0.3 * t + 1.16 * transition / radius
    if mass > 20:
        extent = max(extent, 1.38)
    return LesionLook(
        t=t, radius=radius, aspect=rng.uniform(1.0, 1.5), transition=transition,
        lucency=contrast * (0.6 - 0.25 * t), rim=contrast * 0.45 * (1 - t) ** 2, septa=0.6 * (1 - t),
        permeation=contrast * 0.5 * t**2, mass=mass, spicules=contrast * 280 * max(0.0, (t - 0.7) / 0.3),
        extent=float(extent),
    )


def _half_extents(look: LesionLook, slope: float) -> tuple[float, float]:
    theta = np.arctan(slope)
    a, b = look.extent * look.radius * look.aspect, look.extent * look.radius
    hx = np.hypot(a * np.sin(theta), b * np.cos(theta))
    hy = np.hypot(a * np.cos(theta), b * np.sin(theta))
    return float(hx), float(hy)


def _box(cx: float, cy: float, hx: float, hy: float) -> Box:
    last = IMAGE_SIZE - 1.0
    return (max(cx - hx, 0.0), max(cy - hy, 0.0), min(cx + hx, last), min(cy + hy, last))


def _paint(rng: np.random.Generator, limb: Limb, look: LesionLook, cx: float, cy: float, slope: float) -> None:
    hx, hy = _half_extents(look, slope)
    x0, x1 = max(int(cx - hx) - 3, 0), min(int(cx + hx) + 4, IMAGE_SIZE)
    y0, y1 = max(int(cy - hy) - 3, 0), min(int(cy + hy) + 4, IMAGE_SIZE)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    theta = np.arctan(slope)
    along = (xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    across = (xx - cx) * np.cos(theta) - (yy - cy) * np.sin(theta)
    r = look.radius
    rho = np.hypot(along / (r * look.aspect), across / r)
    inside = 0.5 * erfc((rho - 1) * r / look.transition)
    period = r / rng.uniform(1.8, 3.0)
    stripes = np.abs(np.sin(along / period + rng.uniform(0, np.pi))) < 0.22
    septa = ndimage.gaussian_filter(stripes.astype(np.float64), 0.8)
    permeative = 0.5 * erfc((rho - 1 - 0.3 * look.t) * r / look.transition)
    mottle = np.clip(fine_noise(rng, rho.shape, 1.2), 0, 2.5)
    loss = look.lucency * inside * (1 - look.septa * septa) + look.permeation * permeative * mottle
    region = np.s_[y0:y1, x0:x1]
    ring_width = max(1.2, 0.1 * r)
    ring = np.exp(-(((rho - 1) * r - 0.5 * look.transition) / ring_width) ** 2)
    limb.bone[region] = limb.bone[region] * (1 - np.clip(loss, 0, 0.95)) + (
        look.rim * limb.bone_level * ring * limb.bone_mask[region])
    if look.mass > 0:
        limb.soft[region] += look.mass * np.exp(-((rho / 1.15) ** 6))
    if look.spicules > 0:
        angle = np.arctan2(across, along)
        spikes = (np.cos(angle * rng.integers(14, 24)) > 0.8) & (rho > 0.95) & (rho < 1.35)
        limb.soft[region] += look.spicules * spikes * np.exp(-(((rho - 1.1) * r / (0.15 * r + 1)) ** 2))


def _place(rng: np.random.Generator, limb: Limb, looks: Sequence[LesionLook], bone_of: Sequence[int]) -> list[
        tuple[float, float]]:
    """Lesion centres on their bones inside the field. A lesion after the first touches or overlaps the previous
    one with probability 0.3; otherwise its box is kept clear of the others where 40 tries allow."""
    x0, y0, x1, y1 = limb.field
    centres: list[tuple[float, float]] = []
    boxes: list[Box] = []
    for k, (look, b) in enumerate(zip(looks, bone_of)):
        bone = limb.bones[b]
        hx, hy = _half_extents(look, bone.slope)
        lo_y, hi_y = y0 + hy + 0.04 * IMAGE_SIZE, y1 - hy - 0.04 * IMAGE_SIZE
        if hi_y <= lo_y:
            lo_y = hi_y = (y0 + y1) / 2

        def on_bone(cy: float, bone_index: int = b) -> tuple[float, float]:
            bone_k = limb.bones[bone_index]
            cx = bone_k.axis_x + bone_k.slope * (cy - IMAGE_SIZE / 2)
            cx += rng.uniform(-0.45, 0.45) * max(bone_k.half_width - look.radius, 0.0)
            return float(np.clip(cx, x0 + hx + 2, max(x1 - hx - 2, x0 + hx + 2))), cy

        if k and rng.random() < 0.3:
            prev_x, prev_y = centres[-1]
            prev_hy = (boxes[-1][3] - boxes[-1][1]) / 2
            cy = float(np.clip(prev_y + rng.choice([-1, 1]) * rng.uniform(0.6, 1.0) * (prev_hy + hy), lo_y, hi_y))
            cx, cy = on_bone(cy, bone_of[k - 1])
        else:
            for _ in range(40):
                cx, cy = on_bone(float(rng.uniform(lo_y, hi_y)))
                box = _box(cx, cy, hx, hy)
                if not any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in boxes):
                    break
        centres.append((cx, cy))
        boxes.append(_box(cx, cy, hx, hy))
    return centres


def render_image(rng: np.random.Generator, anatomy: Anatomy, spacing_mm: float, view: str, laterality: str,
                 evidence: Sequence[float], n_clear: int = 0) -> Rendering:
    """One radiograph with a lesion per latent in ``evidence`` (the first ``n_clear`` drawn clearly visible)."""
    limb = draw_limb(rng, anatomy, spacing_mm, view, laterality)
    widths = np.asarray([b.half_width for b in limb.bones])
    bone_of = [int(rng.choice(len(widths), p=widths / widths.sum())) for _ in evidence]
    looks = [lesion_look(rng, z, spacing_mm, limb.bones[b].half_width, k < n_clear)
             for k, (z, b) in enumerate(zip(evidence, bone_of))]
    centres = _place(rng, limb, looks, bone_of)
    boxes = []
    for look, b, (cx, cy) in zip(looks, bone_of, centres):
        _paint(rng, limb, look, cx, cy, limb.bones[b].slope)
        boxes.append(_box(cx, cy, *_half_extents(look, limb.bones[b].slope)))
    signal = collimate(rng, expose(rng, limb.background + limb.soft + limb.bone), limb.field)
    marker_box = marker(rng, signal, limb.field, laterality, boxes)
    values = np.clip(np.rint(signal), 0, 4095)
    photometric = "MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        values = 4095 - values  # stored so that a viewer's inversion shows dense bone bright again
    fx0, fy0, fx1, fy1 = limb.field
    low, high = np.percentile(values[fy0:fy1, fx0:fx1], [1, 99.5])
    width = max((high - low) * rng.uniform(0.85, 1.2), 64.0)
    center = (low + high) / 2 + rng.uniform(-0.08, 0.08) * (high - low)
    return Rendering(values.astype(np.uint16), tuple(boxes), marker_box, limb.field, photometric,
                     float(round(center)), float(round(width)))
