"""Radiograph pre-processing shared by training and inference: DICOM pixels -> normalised float image in [0, 1].

Modality LUT/rescale, VOI window (or robust percentiles), MONOCHROME1 inversion, then a square model input made by
scaling the long side and padding; ``scale`` maps model-input pixels back to source pixels. numpy + PIL only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.pixels import apply_modality_lut


@dataclass(frozen=True)
class PreparedImage:
    """A radiograph ready for the models: full-resolution normalised pixels and the square detector input."""

    native: np.ndarray  # (rows, cols) float32 in [0, 1], source geometry, bright = dense
    model_input: np.ndarray  # (size, size) float32 in [0, 1]: native scaled by ``scale``, padded bottom/right
    scale: float  # model-input pixels per source pixel; source = model / scale (no offset: padding is at the end)
    rows: int
    cols: int


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def normalise(ds: Dataset, frame: int = 1) -> np.ndarray:
    """Pixels of one frame (1-based) as float32 in [0, 1], windowed, with high values meaning dense tissue."""
    pixels = ds.pixel_array  # pydicom decodes compressed syntaxes with pylibjpeg / openjpeg
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[frame - 1]
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is not None and width is not None and _first(width) > 1:
        c, w = _first(centre), _first(width)
        low, high = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    else:
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    out = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def resize(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Area-preserving resize of a float image (PIL bilinear with antialias, deterministic)."""
    resized = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F").resize((cols, rows), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def to_model_input(native: np.ndarray, size: int) -> PreparedImage:
    """Scale the long side to ``size`` (keeping aspect) and zero-pad to a square."""
    rows, cols = native.shape
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    square = np.zeros((size, size), dtype=np.float32)
    square[:new_rows, :new_cols] = resize(native, new_rows, new_cols)
    return PreparedImage(native=native, model_input=square, scale=scale, rows=rows, cols=cols)


def prepare_dataset(ds: Dataset, size: int, frame: int = 1) -> PreparedImage:
    return to_model_input(normalise(ds, frame), size)


def load_radiograph(path: Path, size: int, frame: int = 1) -> PreparedImage:
    """Read a DICOM radiograph and prepare it for a model with ``size`` x ``size`` input."""
    return prepare_dataset(dcmread(path), size, frame)


def crop(native: np.ndarray, box: tuple[float, float, float, float], size: int, margin: float = 0.25) -> np.ndarray:
    """A square crop around a source-pixel box (x0, y0, x1, y1) with context margin, zero-padded, resized."""
    x0, y0, x1, y1 = box
    half = max(x1 - x0, y1 - y0) * (0.5 + margin) + 2.0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - half)), int(round(cy - half))
    side = max(int(round(2 * half)), 2)
    padded = np.zeros((side, side), dtype=np.float32)
    rows, cols = native.shape
    r0, r1 = max(top, 0), min(top + side, rows)
    c0, c1 = max(left, 0), min(left + side, cols)
    if r1 > r0 and c1 > c0:
        padded[r0 - top : r1 - top, c0 - left : c1 - left] = native[r0:r1, c0:c1]
    return resize(padded, size, size)


def box_to_source(box: tuple[float, float, float, float], prepared: PreparedImage) -> tuple[float, float, float, float]:
    """Model-input box -> source pixel box, clipped to the image."""
    x0, y0, x1, y1 = (v / prepared.scale for v in box)
    clip_x = float(prepared.cols - 1)
    clip_y = float(prepared.rows - 1)
    return (
        float(min(max(x0, 0.0), clip_x)),
        float(min(max(y0, 0.0), clip_y)),
        float(min(max(x1, 0.0), clip_x)),
        float(min(max(y1, 0.0), clip_y)),
    )
