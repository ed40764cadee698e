"""Where a 3D finding lies on the slices of its series, from each slice's header (Image Position/Orientation
(Patient), Pixel Spacing, Frame of Reference): for the presentation state, which outlines the box on every slice it
spans, and for the overlays, the patient orientation of a slice. Headers only; no pixels, no I/O.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

from pipelines.base import PatientBox, PixelBox

# LPS: +x is the patient's left, +y posterior, +z head (PS3.3 C.7.6.1.1.1).
_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))


def _geometry(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(position, row direction, column direction, (row spacing, column spacing)), or None without them."""
    try:
        position = np.array([float(v) for v in header.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in header.ImageOrientationPatient], dtype=np.float64)
        spacing = np.array([float(v) for v in header.PixelSpacing], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if position.shape != (3,) or orientation.shape != (6,) or spacing.shape != (2,) or np.any(spacing <= 0):
        return None
    return position, orientation[:3], orientation[3:], spacing


def distance_from_centre(box: PatientBox, header: Dataset) -> tuple[float, float] | None:
    """(distance of the slice's plane from the box's centre, the box's half-extent along the slice normal), mm; the
    plane cuts through the box when the first is at most the second. None when the header has no geometry."""
    geometry = _geometry(header)
    if geometry is None:
        return None
    position, along_row, along_column, _ = geometry
    normal = np.cross(along_row, along_column)
    lo = np.array([box.x0, box.y0, box.z0])
    hi = np.array([box.x1, box.y1, box.z1])
    return abs(float(((lo + hi) / 2 - position) @ normal)), float(0.5 * np.abs(normal) @ (hi - lo))


def box_on_slice(box: PatientBox, header: Dataset) -> PixelBox | None:
    """The box's cross-section on the slice, as a (column, row) pixel box; None when the slice's plane misses the
    box, is in another frame of reference or has no geometry. For an oblique slice, the pixel box around the
    projection of the box's eight corners."""
    geometry = _geometry(header)
    where = distance_from_centre(box, header)
    if geometry is None or where is None or str(header.get("FrameOfReferenceUID", "")) != box.frame_of_reference_uid:
        return None
    distance, half = where
    if distance > half + 1e-6:
        return None
    position, along_row, along_column, spacing = geometry
    lo = np.array([box.x0, box.y0, box.z0])
    hi = np.array([box.x1, box.y1, box.z1])
    corners = np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                        for a in (0, 1) for b in (0, 1) for c in (0, 1)]) - position
    columns = corners @ along_row / spacing[1]
    rows = corners @ along_column / spacing[0]
    return PixelBox(float(columns.min()), float(rows.min()), float(columns.max()), float(rows.max()))


def _direction_letters(vector: np.ndarray) -> str:
    """PS3.3 C.7.6.1.1.1: the letters of a direction, the largest component first, components under 0.25 left out
    (so an axial slice tilted by a few degrees is still "L"/"P")."""
    order = sorted(range(3), key=lambda a: -abs(vector[a]))
    return "".join(_LETTERS[a][int(vector[a] > 0)] for a in order if abs(vector[a]) >= 0.25)


def patient_orientation(header: Dataset) -> tuple[str, str] | None:
    """Patient Orientation (the directions of the rows and of the columns) implied by Image Orientation (Patient);
    None when the header has none."""
    geometry = _geometry(header)
    if geometry is None:
        return None
    _, along_row, along_column, _ = geometry
    return _direction_letters(along_row), _direction_letters(along_column)
