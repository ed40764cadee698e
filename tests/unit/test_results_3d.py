"""3D findings on a CT series in the SR, the overlays and the presentation state: a small synthetic chest CT
(devtools.synthetic.chest_ct_io, SMALL_GRID) with findings made from the phantom's true nodules, placed on the slices
by pipelines.common.volume as a 3D pipeline does. Every object is written, run through dciodvfy and read back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from ct_case import IAC, PIPELINE, PRIVATE_SCHEME_WARNING, VERSION, CtCase, ct_case
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from test_results_common import LATERALITY_UNKNOWN, assert_valid

from devtools.synthetic.chest_ct import SMALL_GRID
from node.results.gsps import NO_LESION_TEXT, build_presentation_states
from node.results.sc import build_overlays, display_frame
from node.results.sr import build_sr, read_findings
from node.results.sr3d import ellipsoid_points, long_axis_mm
from pipelines.base import Finding, PatientBox, PipelineResult, PixelBox


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> CtCase:
    return ct_case(tmp_path_factory.mktemp("ct"))


def _sr(ct: CtCase, result: PipelineResult | None = None) -> hd.sr.Comprehensive3DSR:
    return build_sr(
        result or ct.result, ct.slices, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
        series_number=9001, manufacturer="dicom-ai-node", software_version="0.1.0",
    )


def _z_of(ds: Dataset) -> float:
    return float(ds.ImagePositionPatient[2])


def test_sr_states_each_nodule_in_3d_and_on_its_centre_slice(ct: CtCase, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    _sr(ct).save_as(path, enforce_file_format=True)
    assert_valid(path, PRIVATE_SCHEME_WARNING)

    summary = read_findings(hd.sr.srread(path))
    assert len(summary.findings) == len(ct.case.nodules) >= 1
    for found, nodule, made in zip(summary.findings, ct.case.nodules, ct.result.findings):
        x0, y0, z0, x1, y1, z1 = nodule.box
        box = found.volume_box
        assert box is not None and box.frame_of_reference_uid == ct.slices[0].FrameOfReferenceUID
        # the box in mm, as the phantom drew the nodule (float32 in the SR: to a micrometre)
        assert np.allclose([box.x0, box.y0, box.z0, box.x1, box.y1, box.z1], [x0, y0, z0, x1, y1, z1], atol=1e-3)
        assert found.long_axis_mm == pytest.approx(max(x1 - x0, y1 - y0), abs=1e-3)
        # the 2D region: on the slice whose plane is nearest the centre, the box's cross-section in its pixels
        slice_ = ct.slice_of(found.sop_instance_uid)
        centre_z = (z0 + z1) / 2
        assert abs(_z_of(slice_) - centre_z) <= SMALL_GRID.slice_mm / 2 + 1e-6
        assert min(abs(_z_of(ds) - centre_z) for ds in ct.slices) == pytest.approx(abs(_z_of(slice_) - centre_z))
        spacing = float(slice_.PixelSpacing[0])
        origin_x, origin_y = (float(v) for v in slice_.ImagePositionPatient[:2])
        assert found.box == pytest.approx(((x0 - origin_x) / spacing, (y0 - origin_y) / spacing,
                                           (x1 - origin_x) / spacing, (y1 - origin_y) / spacing), abs=1e-3)
        assert found.frame_number == 1 and found.tracking_uid == made.tracking_uid
        assert (found.class_value, found.probability, found.detection_score) == ("1", 0.74, 0.93)


def test_sr_volume_group_is_a_tid_1411_ellipsoid_in_the_frame_of_reference(ct: CtCase) -> None:
    report = hd.sr.Comprehensive3DSR.from_dataset(_sr(ct)).content
    assert isinstance(report, hd.sr.MeasurementReport)
    finding = ct.result.findings[0]
    assert finding.volume_box is not None
    (volume,) = [g for g in report.get_volumetric_roi_measurement_groups()
                 if str(g.tracking_uid) == finding.tracking_uid]
    assert volume[0].ContentTemplateSequence[0].TemplateIdentifier == "1411"
    (scoord,) = [i for i in volume[0].ContentSequence if i.ValueType == "SCOORD3D"]
    assert scoord.ConceptNameCodeSequence[0].CodeValue == codes.DCM.VolumeSurface.value
    assert scoord.GraphicType == "ELLIPSOID"
    assert scoord.ReferencedFrameOfReferenceUID == ct.slices[0].FrameOfReferenceUID
    points = np.asarray(scoord.GraphicData, dtype=float).reshape(6, 3)
    assert np.allclose(points, ellipsoid_points(finding.volume_box), atol=1e-3)
    lengths = [float(np.linalg.norm(points[2 * a + 1] - points[2 * a])) for a in range(3)]
    assert lengths == sorted(lengths, reverse=True)  # major axis first
    (series,) = [i for i in volume[0].ContentSequence if i.ValueType == "UIDREF"
                 and i.ConceptNameCodeSequence[0].CodeValue == codes.DCM.SourceSeriesForSegmentation.value]
    assert series.UID == ct.slices[0].SeriesInstanceUID
    # the planar groups come first (2D viewers draw the first region of a finding) and the long axis is on them
    groups = [g for g in report.get_planar_roi_measurement_groups() if str(g.tracking_uid) == finding.tracking_uid]
    assert len(groups) == 2
    (axis,) = [m for g in groups for m in g.get_measurements(name=codes.SCT.LongAxis)]
    assert axis.unit.value == "mm" and axis.value == pytest.approx(long_axis_mm(finding.volume_box), abs=1e-3)


def test_sr_refuses_a_box_in_another_frame_of_reference_or_off_its_slice(ct: CtCase) -> None:
    finding = ct.result.findings[0]
    box = finding.volume_box
    assert box is not None
    elsewhere = replace(finding, volume_box=replace(box, frame_of_reference_uid="1.2.3.4"))
    with pytest.raises(ValueError, match="frame of reference 1.2.3.4.*image's frame of reference"):
        _sr(ct, replace(ct.result, findings=(elsewhere,)))
    far = max(ct.slices, key=lambda ds: abs(_z_of(ds) - box.centre[2]))
    off = replace(finding, sop_instance_uid=str(far.SOPInstanceUID))
    with pytest.raises(ValueError, match="outside the box.*slice through the centre"):
        _sr(ct, replace(ct.result, findings=(off,)))


def test_sc_is_each_centre_slice_lung_windowed_with_its_box_burned_in(ct: CtCase, tmp_path: Path) -> None:
    overlays = build_overlays(
        ct.result, ct.slices, series_instance_uid=generate_uid(), series_number=9002,
        sop_uid_for=lambda key: generate_uid(entropy_srcs=[key]), manufacturer="dicom-ai-node",
        software_version="0.1.0",
    )
    # one SC per slice with findings: here each nodule's centre slice
    assert len(overlays) == len({f.sop_instance_uid for f in ct.result.findings}) == 2
    for n, overlay in enumerate(overlays):
        path = tmp_path / f"sc-{n}.dcm"
        overlay.save_as(path, enforce_file_format=True)
        assert_valid(path)
        sc = dcmread(path)
        (finding,) = [f for f in ct.result.findings
                      if f.sop_instance_uid == sc.SourceImageSequence[0].ReferencedSOPInstanceUID]
        source = ct.slice_of(finding.sop_instance_uid)
        assert (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
        assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert list(sc.PatientOrientation) == ["L", "P"]  # from the CT's Image Orientation (Patient): axial
        # the CT's own lung window (W 1500 / L -600, PS3.3 C.11.2.1.2.1): air dark grey, soft tissue near white
        hu = source.pixel_array.astype(float) * float(source.RescaleSlope) + float(source.RescaleIntercept)
        grey = display_frame(source).astype(float)
        expected = np.clip((hu - (-600 - 0.5 - (1500 - 1) / 2)) / (1500 - 1), 0, 1) * 255
        assert np.abs(grey - expected).max() <= 1.0
        pixels = sc.pixel_array.astype(int)
        box = finding.box
        # the yellow outline along the box's left and right edges, on the rows it spans
        rows = slice(int(np.ceil(box.y0)), int(box.y1) + 1)
        for column in (int(round(box.x0)), int(round(box.x1))):
            edge = pixels[rows, column]
            assert (edge[:, 0] > 200).all() and (edge[:, 1] > 180).all() and (edge[:, 2] < 60).all(), column
        # inside the box, within the outline: the slice itself, in grey
        inner = (slice(int(box.y0) + 3, int(box.y1) - 2), slice(int(box.x0) + 3, int(box.x1) - 2))
        assert pixels[inner].size > 0 and (pixels[inner][..., 0] == pixels[inner][..., 2]).all()
        assert np.abs(pixels[inner][..., 0] - grey[inner]).max() <= 1


def test_gsps_outlines_each_nodule_on_the_slices_it_spans(ct: CtCase, tmp_path: Path) -> None:
    (state,) = build_presentation_states(
        ct.result, ct.slices, series_instance_uid=generate_uid(), series_number=9003,
        sop_uid_for=lambda key: generate_uid(entropy_srcs=[key]), manufacturer="dicom-ai-node",
        software_version="0.1.0",
    )
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    assert_valid(path)
    read = dcmread(path)
    by_slice = {str(a.ReferencedImageSequence[0].ReferencedSOPInstanceUID): a for a in read.GraphicAnnotationSequence}
    assert set(by_slice) == {str(ds.SOPInstanceUID) for ds in ct.slices}  # every slice covered
    spanned = 0
    for ds in ct.slices:
        annotation = by_slice[str(ds.SOPInstanceUID)]
        texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
        through = [f for f in ct.result.findings
                   if f.volume_box is not None and f.volume_box.z0 <= _z_of(ds) <= f.volume_box.z1]
        if not through:
            assert "GraphicObjectSequence" not in annotation and NO_LESION_TEXT in texts
            continue
        # a slice through a nodule: its outline (the box's cross-section, as on the centre slice), never "no lesion"
        spanned += 1
        assert NO_LESION_TEXT not in texts
        for finding in through:
            (outline,) = [g for g in annotation.GraphicObjectSequence if g.TrackingUID == finding.tracking_uid]
            points = np.asarray(outline.GraphicData, dtype=float).reshape(-1, 2)
            assert outline.GraphicType == "POLYLINE" and np.allclose(points[0], points[-1])
            assert (tuple(points.min(axis=0)), tuple(points.max(axis=0))) == (
                pytest.approx((finding.box.x0, finding.box.y0), abs=1e-3),
                pytest.approx((finding.box.x1, finding.box.y1), abs=1e-3))
    assert spanned > len(ct.result.findings)  # the nodules span more slices than their centre slices


def test_real_signed_ct_slice_without_a_window(tmp_path: Path) -> None:
    # pydicom-data's CT_small.dcm: a real CT slice, signed 16-bit, Rescale Intercept -1024, no window of its own
    path = get_testdata_file("CT_small.dcm")
    assert path is not None, "pydicom-data (a test dependency: deploy/setup.sh installs it) lacks CT_small.dcm"
    source = dcmread(path)
    assert source.PixelRepresentation == 1 and "WindowCenter" not in source
    x, y, z = (float(v) for v in source.ImagePositionPatient)
    spacing = float(source.PixelSpacing[0])  # square pixels
    uid = generate_uid
    pixel_box = PixelBox(20, 30, 44, 40)
    box = PatientBox(str(source.FrameOfReferenceUID), x + 20 * spacing, y + 30 * spacing, z - 4.0,
                     x + 44 * spacing, y + 40 * spacing, z + 2.0)
    finding = Finding(
        tracking_uid=uid(), tracking_id="nodule 1", class_code=IAC, probability=0.74,
        class_probabilities={IAC.meaning: 0.74}, detection_score=0.93, sop_instance_uid=str(source.SOPInstanceUID),
        sop_class_uid=str(source.SOPClassUID), frame_number=1, box=pixel_box, inputs_used=("image",),
        inputs_missing=(), volume_box=box,
    )
    result = PipelineResult(PIPELINE, VERSION, (finding,), (str(source.SOPInstanceUID),), 0.3, (), "ok", "cpu")
    sr = build_sr(result, [source], series_instance_uid=uid(), sop_instance_uid=uid(), series_number=9001,
                  manufacturer="dicom-ai-node", software_version="0.1.0")
    (sc,) = build_overlays(result, [source], series_instance_uid=uid(), series_number=9002,
                           sop_uid_for=lambda key: uid(), manufacturer="dicom-ai-node", software_version="0.1.0")
    (state,) = build_presentation_states(result, [source], series_instance_uid=uid(), series_number=9003,
                                         sop_uid_for=lambda key: uid(), manufacturer="dicom-ai-node",
                                         software_version="0.1.0")
    # the source's own flaws (Patient's Weight 0, no body part) are all dciodvfy warns about
    inherited = ("Value is zero for value 1 of attribute <Patient's Weight>", LATERALITY_UNKNOWN)
    for name, ds in (("sr", sr), ("sc", sc), ("gsps", state)):
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        assert_valid(tmp_path / f"{name}.dcm", PRIVATE_SCHEME_WARNING, *inherited)
    (found,) = read_findings(hd.sr.srread(tmp_path / "sr.dcm")).findings
    assert found.volume_box is not None and found.volume_box.frame_of_reference_uid == box.frame_of_reference_uid
    corners = (box.x0, box.y0, box.z0, box.x1, box.y1, box.z1)
    got = found.volume_box
    assert (got.x0, got.y0, got.z0, got.x1, got.y1, got.z1) == pytest.approx(corners, abs=1e-3)
    assert found.long_axis_mm == pytest.approx(24 * spacing, abs=1e-3)
    # signed values through the rescale to the default window: the full grey range, the box burned in
    grey = display_frame(source)
    assert grey.min() == 0 and grey.max() == 255
    edge = dcmread(tmp_path / "sc.dcm").pixel_array[31:40, 20].astype(int)
    assert (edge[:, 0] > 200).all() and (edge[:, 1] > 180).all() and (edge[:, 2] < 60).all()
