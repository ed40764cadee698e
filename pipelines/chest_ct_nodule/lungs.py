"""The chest CT's out-of-distribution gate: does the volume hold lung fields at all?

The detector was trained on chest CT; a head, abdomen or extremity CT sent without a Body Part Examined passes the
header checks of the intended use, and a nodule detector fires on whatever it is given. Air-density voxels
enclosed by the body (per axial slice: the body is everything above -400 HU with its holes filled, lung is what is
below -400 HU inside it) are a large share of a chest CT and almost none of the others.

Measured with ``lung_field_fraction`` on the model volume (2 mm grid): synthetic chest phantoms (held-out cohort,
seed 101) 0.23-0.24; the real head CT of pydicom-data (J2K_pixelrep_mismatch, stacked to a 40-slice series) 0.03
(sinuses and mastoids); pydicom's CT_small stacked the same way 0.00. A real chest CT is typically 0.2-0.5 over
its slices; MIN_LUNG_FIELD_FRACTION sits well below that and above the others.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BODY_HU = -400.0  # soft tissue, fat and bone are above; lung parenchyma and air below
MIN_LUNG_FIELD_FRACTION = 0.10


def lung_field_fraction(array_zyx: np.ndarray) -> float:
    """Share of the body's enclosed area (over all axial slices) that is air-density: 0 for no body at all."""
    body = array_zyx > BODY_HU
    filled = np.stack([ndimage.binary_fill_holes(s) for s in body]) if body.size else body
    enclosed_air = filled & ~body
    total = int(filled.sum())
    return float(enclosed_air.sum()) / total if total else 0.0


def lung_field_problem(array_zyx: np.ndarray) -> str | None:
    """None when the volume holds lung fields; else the words for the SR's "not analysed" reason."""
    fraction = lung_field_fraction(array_zyx)
    if fraction >= MIN_LUNG_FIELD_FRACTION:
        return None
    return (f"no lung fields: air-density share inside the body {fraction:.2f} (a chest CT has at least "
            f"{MIN_LUNG_FIELD_FRACTION:.2f}); the model is made for chest CT")
