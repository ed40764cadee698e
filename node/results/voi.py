"""The window a viewer should apply to a source image: the pipeline's display window when it declares one, else the
image's own VOI (the VOI LUT, else the first window) or, when it has none, a robust default, the same for the burned-in overlays (``sc``) and the presentation states (``gsps``).

The default is the 0.5-99.5 percentile range of the modality values, robust to the collimator edges and burned-in
markers typical of radiographs. No I/O; pixel data is decoded only for images without a VOI of their own.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue

from pipelines.base import DisplayWindow

DEFAULT_EXPLANATION = "AI node default: 0.5-99.5 percentile"


def has_own_voi(source: Dataset) -> bool:
    """Whether the image states a VOI (VOI LUT Sequence, or Window Center and Width) at its top level."""
    return "VOILUTSequence" in source or ("WindowCenter" in source and "WindowWidth" in source)


def modality_values(source: Dataset, frame_number: int = 1) -> np.ndarray:
    """One frame after the modality transform (rescale), before any VOI."""
    image = hd.Image.from_dataset(source, copy=True)
    return np.asarray(image.get_frame(frame_number, apply_voi_transform=False, apply_presentation_lut=False))


def robust_window(values: np.ndarray) -> tuple[float, float]:
    """(center, width) spanning the 0.5-99.5 percentiles of ``values``; at least 1 wide. Rounded so that the values
    fit a DS (16 characters)."""
    lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    hi = max(hi, lo + 1.0)
    return round((lo + hi) / 2.0, 2), round(hi - lo, 2)


def _first(value: Any) -> Any:
    """The first of a multi-valued window attribute (a viewer's default is the first window)."""
    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value


def softcopy_voi(
    source: Dataset, referenced: hd.ReferencedImageSequence | None = None, window: DisplayWindow | None = None,
) -> hd.pr.SoftcopyVOILUTTransformation:
    """The source's VOI as a presentation state's Softcopy VOI LUT item, applying to ``referenced`` (None: all);
    ``window``: the pipeline's own display window instead."""
    if window is not None:
        return _window(window.center, window.width, window.explanation, None, referenced)
    if "VOILUTSequence" in source:
        lut = hd.LUT.from_dataset(source.VOILUTSequence[0])
        explanation = source.VOILUTSequence[0].get("LUTExplanation")
        return hd.pr.SoftcopyVOILUTTransformation(
            voi_luts=[hd.VOILUT(lut.first_mapped_value, lut.lut_data, str(explanation) if explanation else None)],
            referenced_images=referenced,
        )
    if has_own_voi(source):
        explanation = source.get("WindowCenterWidthExplanation")
        return _window(float(_first(source.WindowCenter)), float(_first(source.WindowWidth)),
                       str(_first(explanation)) if explanation else None, source.get("VOILUTFunction") or None,
                       referenced)
    center, width = robust_window(modality_values(source))
    return _window(center, width, DEFAULT_EXPLANATION, None, referenced)


def _window(
    center: float, width: float, explanation: str | None, function: str | None,
    referenced: hd.ReferencedImageSequence | None,
) -> hd.pr.SoftcopyVOILUTTransformation:
    # One-element lists: highdicom 0.28 stores a str explanation as list(str), one value per character.
    return hd.pr.SoftcopyVOILUTTransformation(
        window_center=[center], window_width=[width], window_explanation=[explanation] if explanation else None,
        voi_lut_function=function, referenced_images=referenced,
    )
