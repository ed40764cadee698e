"""Findings as a Grayscale Softcopy Presentation State over the analysed images, in the original study.

Each finding is a closed POLYLINE around its box (PIXEL units, on its source image and frame) and a text label
("lesion 1: Malignant neoplasm, primary 0.87") in the graphic layer "AI FINDINGS"; a viewer that shows presentation states
draws them over the original pixels, at full fidelity, and can hide them. Each image keeps its own VOI (its VOI LUT
or first window, else the overlays' robust default, ``voi``); MONOCHROME1 images get Presentation LUT Shape
INVERSE, because a presentation state's grayscale pipeline replaces the image's Photometric Interpretation (PS3.4
N.2.1.4).

No findings: every analysed image gets the text "AI: no lesion found" (and images without findings in a study with
findings get it too). A radiologist who opens the AI's presentation state should see a statement on every image it
covers, never an empty layer that could mean "not analysed" or "not loaded". Images left out of the analysis are not
covered; the SR names them. Every image also carries "AI result - not for diagnostic use", as the overlays do.

A 3D finding (``volume_box``) is outlined on every slice of its series that its box spans, not only on the slice
through its centre that the SR and the overlay show: a reader scrolling through the nodule sees it on each of its
slices, and none of them says "no lesion found".

One GSPS per run, unless the analysed images cannot share one: highdicom's GSPS takes one displayed area, one
Modality LUT and one Presentation LUT for all its images, so images that differ in size, rescale or polarity (or a
multi-frame image) get a GSPS each, keyed by their first SOP Instance UID. UIDs come from the caller; no I/O.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Callable, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.results import coding
from node.results.anatomy import series_anatomy
from node.results.equipment import algorithm_equipment
from node.results.sc import BANNER_TEXT, label
from node.results.slices import box_on_slice
from node.results.source_attrs import sanitized
from node.results.voi import softcopy_voi
from pipelines.base import DisplayWindow, Finding, PipelineResult

NO_LESION_TEXT = "AI: no lesion found"
LAYER_NAME = "AI FINDINGS"
CONTENT_LABEL = "AI_FINDINGS"
# The overlays' box yellow, sRGB (255, 220, 0), as the CIELab a presentation state recommends colours in.
_YELLOW = hd.color.CIELabColor(88.18, -4.45, 88.02)

_PIXEL = hd.pr.AnnotationUnitsValues.PIXEL
_DISPLAY = hd.pr.AnnotationUnitsValues.DISPLAY
# Fractions of the displayed area: statements about the whole image sit at its top-left and bottom edges.
_NO_LESION_BOX = (0.02, 0.02, 0.45, 0.07)
_BANNER_BOX = (0.02, 0.93, 0.98, 0.98)


def _layer() -> hd.pr.GraphicLayer:
    # A new item per object: datasets placed in a sequence are not shared between objects.
    return hd.pr.GraphicLayer(
        layer_name=LAYER_NAME, order=1, description="AI findings: boxes and labels", display_color=_YELLOW
    )


def build_presentation_states(
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
) -> list[hd.pr.GrayscaleSoftcopyPresentationState]:
    """The GSPS of one run over its analysed images (usually one; see the module docstring).

    ``sources`` must include every analysed image (headers; pixel data where the image states no VOI of its own).
    ``sop_uid_for(key)`` gives each GSPS its SOP Instance UID, ``key`` being the first SOP Instance UID it covers.
    """
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    unknown = sorted({u for u in result.images_analysed if u not in by_uid}
                     | {f.sop_instance_uid for f in result.findings if f.sop_instance_uid not in by_uid})
    if unknown:
        raise ValueError(f"result references instances not among the sources: {unknown}")
    analysed = sorted(set(result.images_analysed) | {f.sop_instance_uid for f in result.findings})
    if not analysed:
        raise ValueError("a presentation state needs at least one analysed image")
    findings: dict[str, list[Finding]] = defaultdict(list)
    for f in result.findings:
        findings[f.sop_instance_uid].append(f)
        spanned_slices = _on_spanned_slices(f, [by_uid[u] for u in analysed if u != f.sop_instance_uid],
                                              str(by_uid[f.sop_instance_uid].get("SeriesInstanceUID", "")))
        for spanned in spanned_slices:
            findings[spanned.sop_instance_uid].append(spanned)

    groups: dict[tuple[object, ...], list[Dataset]] = defaultdict(list)
    for uid in analysed:
        groups[_shared_presentation(by_uid[uid])].append(by_uid[uid])
    description = (f"AI {result.pipeline_name} {result.pipeline_version} findings{' amended' if amends else ''}"
                   " - not for diagnostic use")
    states: list[hd.pr.GrayscaleSoftcopyPresentationState] = []
    # Ordered by their first image, so that instance numbers do not depend on the order of the sources.
    for number, images in enumerate(sorted(groups.values(), key=lambda g: str(g[0].SOPInstanceUID)), start=1):
        headers = [sanitized(ds) for ds in images]
        several = len(images) > 1
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=headers,
            series_instance_uid=series_instance_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid_for(str(images[0].SOPInstanceUID)),
            instance_number=number,
            manufacturer=manufacturer,
            manufacturer_model_name=manufacturer,
            software_versions=software_version,
            # highdicom documents None as allowed (General Equipment, Type 3); the node has no serial number.
            device_serial_number=None,  # type: ignore[arg-type]
            content_label=CONTENT_LABEL,
            content_description=description[:64],
            graphic_layers=[_layer()],
            graphic_annotations=[
                annotation
                for image, header in zip(images, headers)
                for annotation in _annotations(header, findings.get(str(image.SOPInstanceUID), []))
            ],
            voi_lut_transformations=[softcopy_voi(images[0], None, window)] if window is not None else [
                softcopy_voi(image, hd.ReferencedImageSequence([header]) if several else None)
                for image, header in zip(images, headers)
            ],
            presentation_lut_transformation=hd.PresentationLUTTransformation(
                presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE
                if images[0].PhotometricInterpretation == "MONOCHROME1"
                else hd.PresentationLUTShapeValues.IDENTITY
            ),
            series_description=description[:64],
            coding_schemes=[coding.IHE_SCHEME_ITEM],
            contributing_equipment=[
                algorithm_equipment(result.pipeline_name, result.pipeline_version, manufacturer)],
        )
        series_anatomy(state, headers)  # General Series' Laterality (2C), which highdicom leaves out
        states.append(state)
    return states


def _on_spanned_slices(finding: Finding, others: Sequence[Dataset], series_uid: str) -> list[Finding]:
    """A 3D finding on the other slices of its series that its box spans, each with the box's cross-section there
    (``slices.box_on_slice``); nothing for a 2D finding."""
    if finding.volume_box is None:
        return []
    out: list[Finding] = []
    for header in others:
        if str(header.get("SeriesInstanceUID", "")) != series_uid:
            continue
        box = box_on_slice(finding.volume_box, header)
        if box is not None and box.x1 > box.x0 and box.y1 > box.y0:
            out.append(replace(finding, sop_instance_uid=str(header.SOPInstanceUID), frame_number=1, box=box))
    return out


def _shared_presentation(image: Dataset) -> tuple[object, ...]:
    """What the images of one GSPS must share (see the module docstring)."""
    if int(image.get("NumberOfFrames") or 1) > 1:
        return ("multi-frame", str(image.SOPInstanceUID))
    rescale = tuple(str(image.get(k, "")) for k in ("RescaleSlope", "RescaleIntercept", "RescaleType"))
    return int(image.Rows), int(image.Columns), str(image.PhotometricInterpretation), rescale


def _annotations(header: Dataset, findings: Sequence[Finding]) -> list[hd.pr.GraphicAnnotation]:
    """One annotation per frame with findings (the whole image for single-frame images), or the "no lesion" one."""
    layer = _layer()  # annotations name their layer; the item itself is not kept
    multi_frame = int(header.get("NumberOfFrames") or 1) > 1
    if not findings:
        return [hd.pr.GraphicAnnotation(
            referenced_images=[header], graphic_layer=layer,
            text_objects=[hd.pr.TextObject(NO_LESION_TEXT, _DISPLAY, bounding_box=_NO_LESION_BOX), _banner()],
        )]
    by_frame: dict[int, list[Finding]] = defaultdict(list)
    for f in findings:
        by_frame[f.frame_number].append(f)
    return [
        hd.pr.GraphicAnnotation(
            referenced_images=[header],
            graphic_layer=layer,
            referenced_frame_number=frame if multi_frame else None,
            graphic_objects=[_outline(f) for f in on_frame],
            text_objects=[_caption(f, int(header.Rows), int(header.Columns)) for f in on_frame] + [_banner()],
        )
        for frame, on_frame in sorted(by_frame.items())
    ]


def _banner() -> hd.pr.TextObject:
    return hd.pr.TextObject(BANNER_TEXT, _DISPLAY, bounding_box=_BANNER_BOX)


def _box_corners(finding: Finding) -> np.ndarray:
    """The closed outline of a finding's box, (column, row) pairs from the top-left corner clockwise, as in the SR."""
    b = finding.box
    if not (b.x1 > b.x0 and b.y1 > b.y0):
        raise ValueError(f"{finding.tracking_id}: degenerate box {b}")
    return np.array([[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1], [b.x0, b.y0]], dtype=np.float64)


def _outline(finding: Finding) -> hd.pr.GraphicObject:
    return hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
        graphic_data=_box_corners(finding),
        units=_PIXEL,
        tracking_id=finding.tracking_id,
        tracking_uid=finding.tracking_uid,
    )


def _caption(finding: Finding, rows: int, cols: int) -> hd.pr.TextObject:
    """The label in a box just above the finding (below it at the top edge), sized like the overlays' caption."""
    text = label(finding)
    height = float(min(rows, max(12, min(rows, cols) // 45)))
    width = min(float(cols), 0.6 * height * len(text))
    b = finding.box
    left = min(max(0.0, b.x0), cols - width)
    top = b.y0 - height - 2.0 if b.y0 - height - 2.0 >= 0 else min(b.y1 + 2.0, rows - height)
    return hd.pr.TextObject(
        text, _PIXEL, bounding_box=(left, max(0.0, top), left + width, max(0.0, top) + height),
        text_justification=hd.pr.TextJustificationValues.LEFT,
        tracking_id=finding.tracking_id, tracking_uid=finding.tracking_uid,
    )
