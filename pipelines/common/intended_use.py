"""A bundle's intended use as data (configs/metadata.json "intended_images", the merged config's "intended_use"
<-> IntendedUse) and the header check of one image.

Pure pydicom, no pixels and no torch: the node reads the declaration to route, a pipeline checks each instance before
decoding it. A check's words name the attribute, its value and what is allowed; they never quote a patient's data.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from pydicom import Dataset
from pydicom.multival import MultiValue

from pipelines.base import IntendedUse

SECTION = "intended_use"  # the key in a bundle's merged config ("intended_images" in configs/metadata.json)


def normalise_body_part(value: str) -> str:
    """Body Part Examined as compared: upper-cased and stripped (modalities often send lower case)."""
    return value.strip().upper()


def from_config(section: Mapping[str, Any]) -> IntendedUse:
    """The typed intended use of a bundle's ``intended_use`` section; a wrong entry raises ValueError naming it."""
    known = {"modalities", "body_parts", "views", "photometric_interpretations", "pixel_spacing_mm", "min_size",
             "max_size", "why"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{SECTION}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

    def words(key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = section.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"{SECTION}.{key} must be a list of non-empty strings, not {value!r}")
        return tuple(v.strip().upper() for v in value)

    modalities = words("modalities")
    if not modalities:
        raise ValueError(f"{SECTION}.modalities must name at least one modality, e.g. [\"CR\", \"DX\"]")
    spacing = section.get("pixel_spacing_mm", [0.0, math.inf])
    if (not isinstance(spacing, list) or len(spacing) != 2 or not all(isinstance(v, (int, float)) for v in spacing)
            or not 0 <= spacing[0] <= spacing[1]):
        raise ValueError(f"{SECTION}.pixel_spacing_mm must be [low, high] in mm with 0 <= low <= high, not {spacing!r}")
    sizes = (section.get("min_size", 1), section.get("max_size", 65535))
    if not all(isinstance(v, int) and v >= 1 for v in sizes) or sizes[0] > sizes[1]:
        raise ValueError(f"{SECTION}.min_size and max_size must be pixel counts with min_size <= max_size, not {sizes}")
    return IntendedUse(
        modalities=modalities,
        body_parts=tuple(normalise_body_part(b) for b in words("body_parts")),
        views=words("views"),
        photometric_interpretations=words("photometric_interpretations", ("MONOCHROME1", "MONOCHROME2")),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        min_size=sizes[0],
        max_size=sizes[1],
    )


def to_config(use: IntendedUse, why: Mapping[str, str]) -> dict[str, Any]:
    """The config section of ``use``, with a sentence per decision (``why``) for the reader of the bundle."""
    return {
        "modalities": list(use.modalities),
        "body_parts": list(use.body_parts),
        "views": list(use.views),
        "photometric_interpretations": list(use.photometric_interpretations),
        "pixel_spacing_mm": list(use.pixel_spacing_mm),
        "min_size": use.min_size,
        "max_size": use.max_size,
        "why": dict(why),
    }


def body_part_allowed(use: IntendedUse, body_part: str) -> bool:
    """True when ``body_part`` is absent (empty) or one the model is made for."""
    part = normalise_body_part(body_part)
    return not part or not use.body_parts or part in use.body_parts


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _spacing_problem(ds: Dataset, use: IntendedUse) -> str | None:
    """Pixel Spacing, else Imager Pixel Spacing (CR/DX often state only the detector's): each value within range."""
    low, high = use.pixel_spacing_mm
    for keyword, name in (("PixelSpacing", "Pixel Spacing"), ("ImagerPixelSpacing", "Imager Pixel Spacing")):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
        try:
            values = [float(v) for v in items]
        except (TypeError, ValueError):
            return f"{name} is not a pair of numbers"
        if len(values) != 2 or not all(math.isfinite(v) for v in values):
            return f"{name} is not a pair of numbers"
        if not all(low <= v <= high for v in values):
            shown = " x ".join(f"{v:g}" for v in values)
            return f"{name} {shown} mm is outside the intended {low:g}-{high:g} mm"
        return None
    return None  # not stated: the model's out-of-distribution check decides


def header_problem(ds: Dataset, use: IntendedUse) -> str | None:
    """Why the image ``ds`` (its header: no pixel data needed) is outside ``use``, or None when it is inside.

    An absent Body Part Examined, View Position or pixel spacing is not a problem here: it does not say the image is
    something else, and the out-of-distribution check looks at the pixels.
    """
    modality = _text(ds, "Modality").upper()
    if modality not in use.modalities:
        return f"Modality {modality or '(none)'} is not one of {', '.join(use.modalities)}"
    part = _text(ds, "BodyPartExamined")
    if not body_part_allowed(use, part):
        return f"Body Part Examined {normalise_body_part(part)} is not one of {', '.join(use.body_parts)}"
    view = _text(ds, "ViewPosition").upper()
    if view and use.views and view not in use.views:
        return f"View Position {view} is not one of {', '.join(use.views)}"
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if photometric not in use.photometric_interpretations:
        return (f"Photometric Interpretation {photometric or '(none)'} is not one of "
                f"{', '.join(use.photometric_interpretations)}")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not (use.min_size <= rows <= use.max_size and use.min_size <= columns <= use.max_size):
        return f"image size {columns} x {rows} pixels is outside the intended {use.min_size}-{use.max_size} per side"
    return _spacing_problem(ds, use)
