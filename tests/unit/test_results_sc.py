"""Secondary Capture overlays: written, validated with dciodvfy, read back, and their pixels checked."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage
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

from node.results.sc import BANNER_TEXT, build_overlays, display_frame, label, overlay_key, overlay_png
from node.results.uids import input_digest, result_uid
from pipelines.base import PipelineResult, PixelBox


def _build(r: PipelineResult, sources: list[Dataset]) -> list[Dataset]:
    digest = input_digest(r.images_analysed, "fhir=ok")
    study = str(sources[0].StudyInstanceUID)
    return list(
        build_overlays(
            r,
            sources,
            series_instance_uid=result_uid(study, PIPELINE, VERSION, digest, "sc-series"),
            series_number=9002,
            sop_uid_for=lambda key: result_uid(study, PIPELINE, VERSION, digest, f"sc:{key}"),
            manufacturer="dicom-ai-node",
            software_version="0.1.0",
        )
    )


def _write_and_validate(sc: Dataset, path: Path, *, laterality_unknown: bool = False) -> Dataset:
    sc.save_as(path, enforce_file_format=True)
    # Source names neither body part nor laterality: empty Laterality ("unknown") is what we mean, and
    # dciodvfy's warning says exactly that it is only permitted when unknown.
    assert_valid(path, *((LATERALITY_UNKNOWN,) if laterality_unknown else ()))
    return dcmread(path)


def _bare(ds: Dataset) -> Dataset:
    # Type 2 attributes many CR/DX modalities leave empty or out: the SC must still be valid without them.
    ds.PatientOrientation = None
    del ds.BodyPartExamined
    return ds


def _banner_rows(sc: Dataset) -> slice:
    # The banner is drawn along the bottom edge; its lowest 1% of rows is banner whatever the font size.
    rows = int(sc.Rows)
    return slice(rows - max(3, rows // 100), rows)


@pytest.mark.parametrize(
    "make_source",
    [
        pytest.param(lambda: synthetic_cr(f"{STUDY_UID}.1.1"), id="cr16-mono2-window"),
        pytest.param(
            lambda: synthetic_cr(f"{STUDY_UID}.1.1", window=False, slope=0.5, intercept=-100.0),
            id="cr16-mono2-rescale-nowindow",
        ),
        pytest.param(real_cr, id="real-cr-mono1"),
        pytest.param(lambda: _bare(synthetic_cr(f"{STUDY_UID}.1.1")), id="cr16-no-orientation-no-bodypart"),
    ],
)
def test_overlay_per_image_with_findings(tmp_path: Path, make_source: object) -> None:
    assert callable(make_source)
    source: Dataset = make_source()
    other = synthetic_cr(f"{source.StudyInstanceUID}.9.9", instance_number=2)
    other.StudyInstanceUID = source.StudyInstanceUID
    rows, cols = int(source.Rows), int(source.Columns)
    box = PixelBox(cols * 0.25, rows * 0.3, cols * 0.4, rows * 0.45)
    second = PixelBox(cols * 0.6, rows * 0.6, cols * 0.7, rows * 0.7)
    findings = (finding(source, 1, box), finding(source, 2, second, BENIGN, 0.4))
    r = result([source, other], findings)

    overlays = _build(r, [source, other])
    assert len(overlays) == 1  # "other" has no findings, so no overlay
    unknown = "BodyPartExamined" not in source and source.get("Laterality") not in ("R", "L")
    sc = _write_and_validate(overlays[0], tmp_path / "sc.dcm", laterality_unknown=unknown)

    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
    assert (sc.Rows, sc.Columns) == (rows, cols)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    pixels = sc.pixel_array
    grey = display_frame(source)
    # Banner: red and unlike the windowed source in the same rows.
    band = pixels[_banner_rows(sc)]
    assert band[..., 0].mean() > 150 and band[..., 1].mean() < 80 and band[..., 2].mean() < 80
    assert np.abs(band.astype(int) - grey[_banner_rows(sc)][..., None].astype(int)).mean() > 40
    # Box: the yellow outline runs along the box's left edge (column x0), and the rows between are drawn.
    x0, y0, y1 = int(box.x0), int(box.y0), int(box.y1)
    edge = pixels[y0 + 2 : y1 - 2, x0]
    assert (edge[:, 0] > 200).all() and (edge[:, 1] > 180).all() and (edge[:, 2] < 60).all()
    # Away from annotations the overlay is the source as displayed, in grey (R == G == B).
    clear = pixels[int(rows * 0.8) : int(rows * 0.85), int(cols * 0.05) : int(cols * 0.15)]
    assert (clear[..., 0] == clear[..., 1]).all() and (clear[..., 1] == clear[..., 2]).all()
    assert np.array_equal(clear[..., 0], grey[int(rows * 0.8) : int(rows * 0.85), int(cols * 0.05) : int(cols * 0.15)])

    png = tmp_path / "sc.png"
    overlay_png(sc, png)
    with Image.open(png) as im:
        assert im.mode == "RGB" and im.size == (cols, rows)
        assert np.array_equal(np.asarray(im), pixels)


def test_display_frame_handles_monochrome1_and_rescale() -> None:
    mono2 = synthetic_cr(f"{STUDY_UID}.1.1", window=False, slope=0.5, intercept=-100.0)
    stored = mono2.pixel_array.astype(float)
    shown = display_frame(mono2).astype(float)
    assert shown.min() <= 5 and shown.max() >= 250  # the percentile window spans the output range
    assert np.corrcoef(stored.ravel(), shown.ravel())[0, 1] > 0.9  # brighter stored -> brighter shown

    mono1 = synthetic_cr(f"{STUDY_UID}.1.2")
    mono1.PhotometricInterpretation = "MONOCHROME1"
    inverted = display_frame(mono1).astype(float)
    assert np.corrcoef(mono1.pixel_array.astype(float).ravel(), inverted.ravel())[0, 1] < -0.9

    real = real_cr()
    sample = (slice(0, None, 8), slice(0, None, 8))
    stored_real = real.pixel_array[sample].astype(float).ravel()
    assert np.corrcoef(stored_real, display_frame(real)[sample].astype(float).ravel())[0, 1] < -0.5


def test_no_findings_no_overlays() -> None:
    sources = [synthetic_cr(f"{STUDY_UID}.1.1")]
    assert _build(result(sources, ()), sources) == []


def test_overlays_are_deterministic_and_keyed_by_source() -> None:
    a = synthetic_cr(f"{STUDY_UID}.1.1")
    b = synthetic_cr(f"{STUDY_UID}.1.2", instance_number=2)
    r = result([a, b], (finding(b, 1, PixelBox(10, 200, 60, 260)), finding(a, 2, PixelBox(10, 200, 60, 260))))
    first, second = _build(r, [a, b]), _build(r, [a, b])
    assert [s.SOPInstanceUID for s in first] == [s.SOPInstanceUID for s in second]
    assert len({s.SOPInstanceUID for s in first}) == 2
    assert {s.SourceImageSequence[0].ReferencedSOPInstanceUID for s in first} == {a.SOPInstanceUID, b.SOPInstanceUID}
    assert first[0].SeriesInstanceUID == first[1].SeriesInstanceUID
    assert np.array_equal(first[0].pixel_array, second[0].pixel_array)
    assert overlay_key("1.2.3", 1) == "1.2.3" and overlay_key("1.2.3", 4) == "1.2.3:4"


def test_label_text() -> None:
    a = synthetic_cr(f"{STUDY_UID}.1.1")
    assert label(finding(a, 1, PixelBox(1, 1, 5, 5))) == "lesion 1: Malignant 0.87"
    assert BANNER_TEXT == "AI result - not for diagnostic use"


def _blob_and_background(grey: np.ndarray) -> tuple[float, float]:
    # synthetic_cr's bright blob is centred at column 120, row 150; the gradient's darkest rows are at the top.
    return float(grey[145:155, 115:125].mean()), float(grey[5:15, 300:310].mean())


def test_monochrome1_source_bright_bone_stays_bright(tmp_path: Path) -> None:
    mono2 = synthetic_cr(f"{STUDY_UID}.1.1")
    mono1 = mono1_cr(f"{STUDY_UID}.1.2")  # the same picture, stored inverted
    assert mono1.pixel_array[150, 120] < mono1.pixel_array[10, 305]  # in the stored values the blob is "dark"
    (sc,) = _build(result([mono1], (finding(mono1, 1, PixelBox(250, 300, 300, 360)),)), [mono1])
    shown = _write_and_validate(sc, tmp_path / "sc-mono1.dcm").pixel_array[..., 0]
    blob, background = _blob_and_background(shown)
    assert blob > background + 100  # ...and on screen it is bright, as the modality meant
    assert np.abs(display_frame(mono1).astype(int) - display_frame(mono2).astype(int)).max() <= 1


def test_voi_lut_source_is_windowed_by_its_lut(tmp_path: Path) -> None:
    source = voi_lut_cr(f"{STUDY_UID}.1.1")
    assert "WindowCenter" not in source
    (sc,) = _build(result([source], (finding(source, 1, PixelBox(250, 300, 300, 360)),)), [source])
    shown = _write_and_validate(sc, tmp_path / "sc-lut.dcm").pixel_array[..., 0]
    stored = source.pixel_array
    clear = (slice(0, 280), slice(0, 400))  # above the box, the caption and the banner
    above_knee = stored[clear] >= VOI_LUT_KNEE
    assert above_knee.any() and (~above_knee).any()
    assert (shown[clear][above_knee] == 255).all()  # the LUT saturates there
    expected = np.rint(stored[clear][~above_knee] * 255.0 / VOI_LUT_KNEE)
    assert np.abs(shown[clear][~above_knee] - expected).max() <= 1  # and is linear below


def test_source_with_invalid_attributes_gives_a_valid_sc(tmp_path: Path) -> None:
    source = invalid_cr(f"{STUDY_UID}.1.1")
    (sc,) = _build(result([source], (finding(source, 1, PixelBox(100, 130, 140, 170)),)), [source])
    out = tmp_path / "sc-invalid-source.dcm"
    sc.save_as(out, enforce_file_format=True)
    # Study Date/Time/ID emptied; Laterality "B" on an unknown body part ("chest" is not a CS) stated as unknown
    assert_valid(out, DICOMDIR_GAPS, LATERALITY_UNKNOWN)
    read = dcmread(out)
    assert read.StudyInstanceUID == STUDY_UID and read.PatientID == source.PatientID
    assert read.PatientSex in (None, "") and read.StudyDate in (None, "") and read.PatientName in (None, "")
    assert "PixelSpacing" not in read and "BodyPartExamined" not in read
    assert read.PatientOrientation in (None, "", [])
    assert read.BurnedInAnnotation == "YES"
    assert_algorithm_equipment(read)


def test_sc_reads_back_with_highdicom_and_names_the_algorithm(tmp_path: Path) -> None:
    source = synthetic_cr(f"{STUDY_UID}.1.1")
    (sc,) = _build(result([source], (finding(source, 1, PixelBox(100, 130, 140, 170)),)), [source])
    path = tmp_path / "sc.dcm"
    _write_and_validate(sc, path)
    image = hd.imread(path)
    assert image.SOPClassUID == SecondaryCaptureImageStorage and image.get_frame(1).shape == (480, 400, 3)
    assert "not for diagnostic use" in image.SeriesDescription
    assert_algorithm_equipment(image)
