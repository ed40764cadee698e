"""Presentation states: written, validated with dciodvfy, read back, and checked the way a reader would look at them:
the boxes where the findings are, their labels, a statement on every image without findings, each image's VOI, and
MONOCHROME1 shown the right way round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage
from test_results_common import (
    BENIGN,
    DICOMDIR_GAPS,
    LATERALITY_UNKNOWN,
    PIPELINE,
    STUDY_UID,
    VERSION,
    VOI_LUT_KNEE,
    assert_algorithm_equipment,
    assert_valid,
    finding,
    invalid_cr,
    mono1_cr,
    real_cr,
    result,
    synthetic_cr,
    voi_lut_cr,
)

from node.results.gsps import LAYER_NAME, NO_LESION_TEXT, build_presentation_states
from node.results.sc import BANNER_TEXT, label
from node.results.uids import input_digest, result_uid
from node.results.voi import DEFAULT_EXPLANATION, modality_values, robust_window
from pipelines.base import PipelineResult, PixelBox


def _build(r: PipelineResult, sources: list[Dataset]) -> list[Dataset]:
    digest = input_digest(r.images_analysed, "fhir=ok")
    study = str(sources[0].StudyInstanceUID)
    return list(build_presentation_states(
        r, sources,
        series_instance_uid=result_uid(study, PIPELINE, VERSION, digest, "gsps-series"),
        series_number=9904,
        sop_uid_for=lambda key: result_uid(study, PIPELINE, VERSION, digest, f"gsps:{key}"),
        manufacturer="dicom-ai-node",
        software_version="0.1.0",
    ))


def _written(state: Dataset, path: Path, *accepted: str) -> Dataset:
    state.save_as(path, enforce_file_format=True)
    assert_valid(path, *accepted)
    return dcmread(path)


def _annotations_on(state: Dataset, sop_uid: str) -> list[Dataset]:
    return [a for a in state.GraphicAnnotationSequence
            if a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == sop_uid]


def _texts(annotations: list[Dataset]) -> list[str]:
    return [t.UnformattedTextValue for a in annotations for t in a.get("TextObjectSequence", [])]


def _covered(state: Dataset) -> set[str]:
    return {i.ReferencedSOPInstanceUID for s in state.ReferencedSeriesSequence for i in s.ReferencedImageSequence}


def test_boxes_and_labels_sit_on_the_findings(tmp_path: Path) -> None:
    a = synthetic_cr(f"{STUDY_UID}.1.1")
    b = synthetic_cr(f"{STUDY_UID}.1.2", instance_number=2)
    f1 = finding(a, 1, PixelBox(100.0, 130.0, 140.5, 170.25))
    f2 = finding(a, 2, PixelBox(250.0, 300.0, 300.0, 360.0), BENIGN, 0.66)
    (state,) = _build(result([a, b], (f1, f2)), [a, b])
    read = _written(state, tmp_path / "gsps.dcm")

    assert read.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage and read.Modality == "PR"
    assert read.StudyInstanceUID == STUDY_UID and read.PatientID == a.PatientID  # in the original study
    assert read.SeriesNumber == 9904 and read.Manufacturer == "dicom-ai-node"
    assert read.SeriesDescription.endswith("not for diagnostic use")
    assert _covered(read) == {a.SOPInstanceUID, b.SOPInstanceUID}  # one GSPS for the study's images
    assert [layer.GraphicLayer for layer in read.GraphicLayerSequence] == [LAYER_NAME]

    (on_a,) = _annotations_on(read, a.SOPInstanceUID)
    assert on_a.GraphicLayer == LAYER_NAME
    outlines = {g.TrackingID: g for g in on_a.GraphicObjectSequence}
    for f in (f1, f2):
        g = outlines[f.tracking_id]
        assert (g.GraphicType, g.GraphicAnnotationUnits, g.GraphicDimensions) == ("POLYLINE", "PIXEL", 2)
        points = np.array(g.GraphicData, dtype=float).reshape(-1, 2)
        box = f.box
        corners = [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1], [box.x0, box.y0]]
        assert points.tolist() == corners  # the box itself, closed, in (column, row)
        assert g.TrackingUID == f.tracking_uid
    captions = {t.UnformattedTextValue: t for t in on_a.TextObjectSequence}
    assert set(captions) == {label(f1), label(f2), BANNER_TEXT}
    assert label(f1) == "lesion 1: Malignant 0.87"
    left, top = captions[label(f1)].BoundingBoxTopLeftHandCorner
    right, bottom = captions[label(f1)].BoundingBoxBottomRightHandCorner
    assert bottom <= f1.box.y0 and left == f1.box.x0 and right <= a.Columns  # just above its box, inside the image
    # the image without findings says so instead of staying blank
    assert NO_LESION_TEXT in _texts(_annotations_on(read, b.SOPInstanceUID))


def test_no_findings_every_analysed_image_says_no_lesion(tmp_path: Path) -> None:
    sources = [synthetic_cr(f"{STUDY_UID}.1.{i}", instance_number=i) for i in (1, 2)]
    (state,) = _build(result(sources, ()), sources)
    read = _written(state, tmp_path / "gsps-empty.dcm")
    assert _covered(read) == {s.SOPInstanceUID for s in sources}
    for s in sources:
        (annotation,) = _annotations_on(read, s.SOPInstanceUID)
        assert "GraphicObjectSequence" not in annotation
        assert _texts([annotation]) == [NO_LESION_TEXT, BANNER_TEXT]
        assert annotation.TextObjectSequence[0].BoundingBoxAnnotationUnits == "DISPLAY"  # visible at any zoom


def test_each_image_keeps_its_own_voi(tmp_path: Path) -> None:
    windowed = synthetic_cr(f"{STUDY_UID}.1.1")
    bare = synthetic_cr(f"{STUDY_UID}.1.2", instance_number=2, window=False, slope=0.5, intercept=-100.0)
    bare.RescaleSlope, bare.RescaleIntercept = 1, 0  # one Modality LUT for the GSPS
    lut = voi_lut_cr(f"{STUDY_UID}.1.3", instance_number=3)
    (state,) = _build(result([windowed, bare, lut], ()), [windowed, bare, lut])
    read = _written(state, tmp_path / "gsps-voi.dcm")
    by_image = {item.ReferencedImageSequence[0].ReferencedSOPInstanceUID: item
                for item in read.SoftcopyVOILUTSequence}
    assert set(by_image) == {windowed.SOPInstanceUID, bare.SOPInstanceUID, lut.SOPInstanceUID}
    own = by_image[windowed.SOPInstanceUID]
    assert (float(own.WindowCenter), float(own.WindowWidth)) == (
        float(windowed.WindowCenter), float(windowed.WindowWidth))
    default = by_image[bare.SOPInstanceUID]  # the overlays' robust default, computed the same way
    expected = robust_window(modality_values(bare))
    assert (float(default.WindowCenter), float(default.WindowWidth)) == pytest.approx(expected)
    assert default.WindowCenterWidthExplanation == DEFAULT_EXPLANATION
    (item,) = by_image[lut.SOPInstanceUID].VOILUTSequence
    assert list(item.LUTDescriptor) == [4096, 0, 16]
    assert bytes(item.LUTData) == bytes(lut.VOILUTSequence[0].LUTData)
    assert np.frombuffer(item.LUTData, "<u2")[VOI_LUT_KNEE] == 65535
    assert read.PresentationLUTShape == "IDENTITY"


def test_a_pipelines_display_window_replaces_the_images_own_in_the_state_and_the_overlay(tmp_path: Path) -> None:
    from node.results.sc import display_frame
    from pipelines.base import DisplayWindow

    windowed = synthetic_cr(f"{STUDY_UID}.1.1")
    lut = voi_lut_cr(f"{STUDY_UID}.1.3", instance_number=3)
    window = DisplayWindow(900.0, 1200.0, "AI FINDINGS")
    digest = input_digest((windowed.SOPInstanceUID, lut.SOPInstanceUID), "fhir=ok")
    (state,) = build_presentation_states(
        result([windowed, lut], ()), [windowed, lut], series_instance_uid=result_uid(STUDY_UID, PIPELINE, VERSION,
                                                                                   digest, "gsps-series"),
        series_number=9904, sop_uid_for=lambda key: result_uid(STUDY_UID, PIPELINE, VERSION, digest, key),
        manufacturer="dicom-ai-node", software_version="0.1.0", window=window)
    read = _written(state, tmp_path / "gsps-window.dcm")
    (item,) = read.SoftcopyVOILUTSequence  # one window for every image, whatever their own VOI
    assert (float(item.WindowCenter), float(item.WindowWidth)) == (900.0, 1200.0)
    assert item.WindowCenterWidthExplanation == "AI FINDINGS" and "VOILUTSequence" not in item
    # the overlay is rendered through the same window: DICOM's linear function on the modality values
    values = modality_values(windowed).astype(float)
    expected = np.clip(((values - (900.0 - 0.5)) / (1200.0 - 1) + 0.5), 0, 1) * 255
    shown = display_frame(windowed, 1, window).astype(float)
    assert np.abs(shown - expected).max() <= 1.0
    assert not np.array_equal(shown, display_frame(windowed, 1).astype(float))  # its own window differs


def test_monochrome1_is_shown_inverse_as_its_modality_meant(tmp_path: Path) -> None:
    # A presentation state's grayscale pipeline replaces Photometric Interpretation (PS3.4 N.2.1.4): without INVERSE a
    # viewer applying it would show a MONOCHROME1 radiograph as a negative.
    mono1 = mono1_cr(f"{STUDY_UID}.1.1")
    (state,) = _build(result([mono1], (finding(mono1, 1, PixelBox(100, 130, 140, 170)),)), [mono1])
    assert _written(state, tmp_path / "gsps-mono1.dcm").PresentationLUTShape == "INVERSE"
    real = real_cr()
    (state,) = _build(result([real], (finding(real, 1, PixelBox(790, 1035, 925, 1230)),)), [real])
    read = _written(state, tmp_path / "gsps-real.dcm")
    assert read.PresentationLUTShape == "INVERSE"
    assert (float(read.SoftcopyVOILUTSequence[0].WindowCenter), float(read.SoftcopyVOILUTSequence[0].WindowWidth)) == (
        550.0, 1024.0)  # the plate's own window
    assert read.BodyPartExamined == "EXTREMITY" and read.Laterality == "R"


def test_images_that_cannot_share_a_presentation_state_get_one_each(tmp_path: Path) -> None:
    small = synthetic_cr(f"{STUDY_UID}.1.1")
    large = synthetic_cr(f"{STUDY_UID}.1.2", instance_number=2, rows=600, cols=500)
    mono1 = mono1_cr(f"{STUDY_UID}.1.3", instance_number=3)
    sources = [small, large, mono1]
    states = _build(result(sources, (finding(large, 1, PixelBox(10, 20, 30, 40)),)), sources)
    assert [_covered(s) for s in states] == [{small.SOPInstanceUID}, {large.SOPInstanceUID}, {mono1.SOPInstanceUID}]
    assert [s.InstanceNumber for s in states] == [1, 2, 3]
    assert len({s.SOPInstanceUID for s in states}) == 3 and len({s.SeriesInstanceUID for s in states}) == 1
    for n, state in enumerate(states):
        _written(state, tmp_path / f"gsps-{n}.dcm")


def test_building_twice_gives_the_same_uids() -> None:
    sources = [synthetic_cr(f"{STUDY_UID}.1.1")]
    r = result(sources, (finding(sources[0], 1, PixelBox(10, 20, 30, 40)),))
    first, second = _build(r, sources), _build(r, sources)
    assert [s.SOPInstanceUID for s in first] == [s.SOPInstanceUID for s in second]
    assert first[0].SOPInstanceUID.startswith("2.25.")


def test_source_with_invalid_attributes_gives_a_valid_gsps(tmp_path: Path) -> None:
    source = invalid_cr(f"{STUDY_UID}.1.1")
    (state,) = _build(result([source], (finding(source, 1, PixelBox(100, 130, 140, 170)),)), [source])
    read = _written(state, tmp_path / "gsps-invalid-source.dcm", DICOMDIR_GAPS, LATERALITY_UNKNOWN)
    assert read.StudyInstanceUID == STUDY_UID and read.PatientSex in (None, "") and read.StudyDate in (None, "")
    assert_algorithm_equipment(read)


def test_rejects_what_it_cannot_draw() -> None:
    a = synthetic_cr(f"{STUDY_UID}.1.1")
    with pytest.raises(ValueError, match="not among the sources"):
        _build(result([a], (finding(a, 1, PixelBox(1, 1, 5, 5)),)), [synthetic_cr(f"{STUDY_UID}.1.9")])
    with pytest.raises(ValueError, match="degenerate"):
        _build(result([a], (finding(a, 1, PixelBox(5, 5, 5, 9)),)), [a])
    with pytest.raises(ValueError, match="outside the valid range"):
        _build(result([a], (finding(a, 1, PixelBox(300, 400, 420, 470)),)), [a])  # beyond the 400 columns
