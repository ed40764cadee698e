"""Burned-in overlays: one RGB Secondary Capture per source image that has findings, in the original study.

Pixels are windowed to 8 bit through highdicom's pixel transforms (the source's VOI LUT or first window, else the
robust default of ``voi``; MONOCHROME1 inverted), boxes/labels and a "not for diagnostic use" banner are drawn with
PIL, and the object is a ``highdicom.sc.SCImage`` that inherits only the source's valid attributes (``source_attrs``).
UIDs come from the caller; nothing here does I/O except ``overlay_png``.
A 3D finding's overlay is the CT slice its image region is on (the slice through its centre), windowed by the
slice's own window like any image, with the Patient Orientation its Image Orientation (Patient) implies.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from node.results import coding
from node.results.anatomy import series_anatomy
from node.results.equipment import algorithm_equipment
from node.results.slices import patient_orientation
from node.results.source_attrs import sanitized
from node.results.voi import has_own_voi, robust_window
from pipelines.base import DisplayWindow, Finding, PipelineResult

BANNER_TEXT = "AI result - not for diagnostic use"
_BANNER_BG = (200, 0, 0)
_BANNER_FG = (255, 255, 255)
_BOX_COLOUR = (255, 220, 0)  # yellow: visible on both dark and bright anatomy, distinct from the red banner


def overlay_key(sop_instance_uid: str, frame_number: int) -> str:
    """The string ``sop_uid_for`` is called with: the source SOP Instance UID, plus the frame for frames > 1."""
    return sop_instance_uid if frame_number == 1 else f"{sop_instance_uid}:{frame_number}"


def label(finding: Finding) -> str:
    """Box caption, e.g. "lesion 1: malignant 0.87"."""
    return f"{finding.tracking_id}: {finding.class_code.meaning} {finding.probability:.2f}"


def build_overlays(
    result: PipelineResult,
    sources: Sequence[Dataset],
    *,
    series_instance_uid: str,
    series_number: int,
    sop_uid_for: Callable[[str], str],
    manufacturer: str,
    software_version: str,
    amends: bool = False,
    window: DisplayWindow | None = None,
) -> list[hd.sc.SCImage]:
    """One SC per (source image, frame) with at least one finding; images without findings get none.

    ``sources`` must include pixel data for every image a finding is on. ``sop_uid_for(overlay_key(...))`` gives
    each SC its (deterministic) SOP Instance UID.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    grouped: dict[tuple[str, int], list[Finding]] = defaultdict(list)
    for f in result.findings:
        if f.sop_instance_uid not in by_uid:
            raise ValueError(f"{f.tracking_id}: source {f.sop_instance_uid} not among the sources")
        grouped[(f.sop_instance_uid, f.frame_number)].append(f)

    overlays: list[hd.sc.SCImage] = []
    # Sorted so that instance numbers do not depend on finding order: a replay yields identical objects.
    for number, ((sop_uid, frame), findings) in enumerate(sorted(grouped.items()), start=1):
        source = by_uid[sop_uid]
        pixels = _render(display_frame(source, frame, window), findings)
        overlays.append(
            _sc_image(
                source,
                pixels,
                series_instance_uid=series_instance_uid,
                series_number=series_number,
                sop_instance_uid=sop_uid_for(overlay_key(sop_uid, frame)),
                instance_number=number,
                manufacturer=manufacturer,
                software_version=software_version,
                algorithm=algorithm_equipment(result.pipeline_name, result.pipeline_version, manufacturer),
                description=(
                    f"AI {result.pipeline_name} {result.pipeline_version} overlay{' amended' if amends else ''}"
                    " - not for diagnostic use"
                ),
            )
        )
    return overlays


def display_frame(source: Dataset, frame_number: int = 1, window: DisplayWindow | None = None) -> np.ndarray:
    """The frame as a viewer would show it by default, as uint8 MONOCHROME2 (rescale, window, MONOCHROME1 handled).

    Uses ``window`` (the pipeline's display window) when given, else the image's own VOI (its VOI LUT, else its
    first window) when it has one; otherwise ``voi.robust_window``.
    """
    image = hd.Image.from_dataset(source, copy=True)
    selector: int | hd.VOILUTTransformation = 0
    if window is not None:
        selector = hd.VOILUTTransformation(window_center=window.center, window_width=window.width)
    elif not has_own_voi(source):
        values = image.get_frame(frame_number, apply_voi_transform=False, apply_presentation_lut=False)
        center, width = robust_window(values)
        selector = hd.VOILUTTransformation(window_center=center, window_width=width)
    shown = image.get_frame(
        frame_number,
        apply_voi_transform=True,
        voi_transform_selector=selector,
        voi_output_range=(0.0, 1.0),
        # Inverts MONOCHROME1 (and INVERSE presentation LUTs) so the output is always MONOCHROME2.
        apply_presentation_lut=True,
    )
    if shown.ndim != 2:
        raise ValueError(f"{source.SOPInstanceUID}: expected a greyscale frame, got shape {shown.shape}")
    return np.clip(np.rint(shown * 255.0), 0, 255).astype(np.uint8)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font: no dependency on fonts installed on the node's host.
    return ImageFont.load_default(size=size)


def _render(grey: np.ndarray, findings: Sequence[Finding]) -> np.ndarray:
    rows, cols = grey.shape
    canvas = Image.fromarray(grey).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    short = min(rows, cols)
    line = max(2, short // 300)
    text_size = max(12, short // 45)
    font = _font(text_size)

    for f in findings:
        b = f.box
        draw.rectangle([b.x0, b.y0, b.x1, b.y1], outline=_BOX_COLOUR, width=line)
        caption = label(f)
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        w, h = right - left, bottom - top
        # Above the box if it fits, else inside its top edge; clamped so the caption never leaves the image.
        x = min(max(0.0, b.x0), max(0.0, cols - w - 2 * line))
        y = b.y0 - h - 3 * line if b.y0 - h - 3 * line >= 0 else b.y0 + 2 * line
        draw.rectangle([x, y, x + w + 2 * line, y + h + 2 * line], fill=(0, 0, 0))
        draw.text((x + line - left, y + line - top), caption, fill=_BOX_COLOUR, font=font)

    # Banner last, across the full width at the bottom, so nothing drawn for a finding can hide it.
    banner_font = _font(max(14, short // 30))
    left, top, right, bottom = draw.textbbox((0, 0), BANNER_TEXT, font=banner_font)
    height = (bottom - top) * 2
    draw.rectangle([0, rows - height, cols, rows], fill=_BANNER_BG)
    draw.text(
        ((cols - (right - left)) / 2 - left, rows - height + (height - (bottom - top)) / 2 - top),
        BANNER_TEXT,
        fill=_BANNER_FG,
        font=banner_font,
    )
    return np.asarray(canvas, dtype=np.uint8)


def _sc_image(
    source: Dataset,
    pixels: np.ndarray,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str,
    software_version: str,
    algorithm: hd.ContributingEquipment,
    description: str,
) -> hd.sc.SCImage:
    header = sanitized(source)  # an invalid Laterality ("B"), orientation or spacing arrives here empty or absent
    orientation = tuple(str(v) for v in header.get("PatientOrientation", []) or [])
    if len(orientation) != 2:
        # CT and MR slices state Image Orientation (Patient) instead (the SC has the slice's rows and columns)
        orientation = patient_orientation(header) or orientation
    spacing = header.get("PixelSpacing")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,  # patient and study modules: the SC lands in the original study
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        # Same geometry as the source (we never resample), so its spacing and orientation still hold.
        # from_ref_dataset annotates this as tuple[int, int]; the constructor it forwards to takes floats (mm).
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,  # type: ignore[arg-type]
        # highdicom requires an orientation for PATIENT; when the source has none (type 2, may be empty) we pass a
        # nominal value and blank it below rather than state an orientation nobody measured.
        patient_orientation=orientation if len(orientation) == 2 else ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=description[:64],
        software_versions=software_version,
        contributing_equipment=[algorithm],
        coding_schemes=[coding.IHE_SCHEME_ITEM],
    )
    if len(orientation) != 2:
        sc["PatientOrientation"].value = None
    # The SC is the same anatomy as its source: its body part, and Laterality as General Series' 2C asks.
    series_anatomy(sc, [header])
    # highdicom's SCImage has no parameter for these; they are single attributes of the General Image module.
    # BurnedInAnnotation YES tells anonymisers and viewers that text is in the pixels.
    sc.BurnedInAnnotation = "YES"
    # Link back to the image that was annotated, so viewers can hang the overlay next to its source.
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def overlay_png(sc: Dataset, path: Path) -> None:
    """Write an SC's pixels (RGB or greyscale, 8 bit) to a PNG file."""
    pixels = sc.pixel_array
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {pixels.dtype}")
    # Pillow infers L (rows, cols) or RGB (rows, cols, 3) from the uint8 array's shape.
    Image.fromarray(pixels).save(path, format="PNG")
