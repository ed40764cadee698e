"""CT series -> volume: series selection, sorting by position, HU, geometry mappings, decoding, refusals."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from devtools.synthetic.chest_ct import SMALL_GRID, generate_case, render_volume
from devtools.synthetic.chest_ct_io import AXIAL, SeriesInfo, ct_series_datasets, grid_positions
from devtools.synthetic.cohort_io import deterministic_uid
from pipelines.base import PatientBox
from pipelines.common.volume import (
    SeriesCriteria,
    VolumeError,
    load_volume,
    read_header,
    resample,
    select_series,
    stack_series,
)


def _info(name: str, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"), number: int = 1) -> SeriesInfo:
    return SeriesInfo(patient_id="SYNTH1", patient_name="Phantom^Test", birth_date="19600101", sex="F",
                      study_uid=deterministic_uid("test", "study"), series_uid=deterministic_uid("test", name),
                      frame_of_reference_uid=deterministic_uid("test", "frame"), series_number=number,
                      image_type=image_type)


def _pattern(n: int, size: int = 12) -> np.ndarray:
    """HU planes that differ per slice, row and column (even values, so a slope of 2 stores them exactly)."""
    k, j, i = np.meshgrid(np.arange(n), np.arange(size), np.arange(size), indexing="ij")
    return (-900 + 40 * k + 6 * j - 2 * i).astype(np.float64)


def _write(folder: Path, name: str, positions: np.ndarray, orientation: tuple[float, ...] = AXIAL,
           hu: np.ndarray | None = None, shuffle: bool = False, **kwargs: object) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image_type = kwargs.pop("image_type", ("ORIGINAL", "PRIMARY", "AXIAL"))
    planes = _pattern(len(positions)) if hu is None else hu
    numbers = list(range(1, len(positions) + 1))
    if shuffle:
        random.Random(3).shuffle(numbers)
    datasets = ct_series_datasets(planes, positions, _info(name, image_type), orientation=orientation,  # type: ignore[arg-type]
                                  instance_numbers=numbers, **kwargs)  # type: ignore[arg-type]
    paths = []
    for ds in datasets:
        path = folder / f"{name}-{ds.InstanceNumber:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _axial(n: int, spacing: float, z0: float = 0.0) -> np.ndarray:
    return np.asarray([[-10.0, -10.0, z0 + k * spacing] for k in range(n)])


def test_select_series_picks_thin_axial_original_primary_out_of_a_mixed_study(tmp_path: Path) -> None:
    _write(tmp_path, "thin", _axial(20, 1.0), slice_thickness=1.0)
    _write(tmp_path, "thin-short", _axial(16, 1.0), slice_thickness=1.0)
    _write(tmp_path, "thick", _axial(20, 5.0), slice_thickness=5.0)
    _write(tmp_path, "scout", _axial(1, 1.0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    _write(tmp_path, "mpr", _axial(30, 0.5), slice_thickness=0.5, image_type=("DERIVED", "SECONDARY", "MPR"))
    choice = select_series([read_header(p) for p in sorted(tmp_path.iterdir())])
    uid = {name: deterministic_uid("test", name) for name in ("thin", "thin-short", "thick", "scout", "mpr")}
    assert choice.series_instance_uid == uid["thin"]
    assert len(choice.stack.slices) == 20
    reasons = {name: choice.rejected[uid[name]].reason_code for name in ("thin-short", "thick", "scout", "mpr")}
    assert reasons == {"thin-short": "not-selected", "thick": "not-selected", "scout": "localizer", "mpr": "derived"}


def test_slices_are_sorted_by_position_not_by_instance_number(tmp_path: Path) -> None:
    positions = _axial(18, 1.25)
    paths = _write(tmp_path, "s", positions, shuffle=True)
    random.Random(1).shuffle(paths)
    volume = load_volume(paths)
    expected = _pattern(18)  # plane k was written at z = k * 1.25: ascending z is ascending k
    np.testing.assert_array_equal(volume.array(), expected.astype(np.float32))
    numbers = [pydicom.dcmread(volume.stack.slices[k].path).InstanceNumber for k in range(18)]
    assert numbers != sorted(numbers)  # the instance numbers were shuffled, the volume is not
    assert volume.image.GetSpacing()[2] == pytest.approx(1.25)


def test_hu_is_stored_value_times_slope_plus_intercept(tmp_path: Path) -> None:
    paths = _write(tmp_path, "s", _axial(16, 2.0), rescale=(2.0, -1000.0))
    volume = load_volume(paths)
    for k, header in enumerate(volume.stack.slices):
        ds = pydicom.dcmread(header.path)
        assert (ds.RescaleSlope, ds.RescaleIntercept) == (2, -1000)
        np.testing.assert_array_equal(volume.array()[k], ds.pixel_array.astype(np.float32) * 2 - 1000)
    np.testing.assert_array_equal(volume.array(), _pattern(16).astype(np.float32))


def test_voxel_patient_source_round_trips_on_a_rotated_feet_first_stack(tmp_path: Path) -> None:
    a = math.radians(7.0)
    # Feet first and rotated 7 deg in plane: the rows run right-to-left, the normal points to the feet (-z).
    orientation = (-math.cos(a), -math.sin(a), 0.0, -math.sin(a), math.cos(a), 0.0)
    n, spacing = 20, 1.5
    positions = np.asarray([[30.0, -40.0, 100.0 - k * spacing] for k in range(n)])  # advancing along the normal
    paths = _write(tmp_path, "ff", positions, orientation=orientation, pixel_spacing=(0.8, 0.6))
    volume = load_volume(paths)
    direction = np.asarray(volume.image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 2], [0, 0, -1], atol=1e-6)
    np.testing.assert_allclose(volume.image.GetSpacing(), (0.6, 0.8, 1.5), atol=1e-6)
    rng = np.random.default_rng(0)
    ijk = rng.uniform([0, 0, 0], [11, 11, n - 1], size=(25, 3))
    xyz = volume.index_to_patient(ijk)
    sitk_xyz = [volume.image.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))) for p in ijk]
    np.testing.assert_allclose(xyz, sitk_xyz, atol=1e-6)
    np.testing.assert_allclose(volume.patient_to_index(xyz), ijk, atol=1e-9)
    # Voxel (i, j, k) of the unresampled volume is pixel (column i, row j) of the k-th slice along the normal.
    grid = np.asarray([[3, 5, 0], [7, 2, 4], [0, 11, 19]], dtype=np.float64)
    sources = volume.index_to_source(grid)
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: np.asarray(pydicom.dcmread(p).ImagePositionPatient) for p in paths}
    for (i, j, k), source in zip(grid, sources):
        assert (source.column, source.row) == pytest.approx((i, j), abs=1e-9)
        np.testing.assert_allclose(by_uid[source.sop_instance_uid], positions[int(k)], atol=1e-3)
    # After resampling to the model's spacing, a voxel still maps to the source pixel at the same point.
    model = resample(volume, (1.2, 1.2, 3.0))
    assert model.image.GetSize() == (6, 8, 10)
    point = model.index_to_patient([[2.0, 3.0, 4.0]])
    source = model.index_to_source([[2.0, 3.0, 4.0]])[0]
    k = [h.sop_instance_uid for h in volume.stack.slices].index(source.sop_instance_uid)
    np.testing.assert_allclose(volume.index_to_patient([[source.column, source.row, k]]), point, atol=1e-6)
    box = model.patient_box([1, 1, 1], [3, 4, 2])
    assert isinstance(box, PatientBox) and box.frame_of_reference_uid == deterministic_uid("test", "frame")
    with pytest.raises(VolumeError) as outside:
        volume.patient_to_source(volume.index_to_patient([[0.0, 0.0, 25.0]]))
    assert outside.value.reason_code == "outside-volume"
    with pytest.raises(VolumeError, match="outside-volume: pixel"):
        volume.index_to_source([[12.6, 3.0, 2.0]])


def test_compressed_copies_of_a_phantom_series_give_the_same_hu(tmp_path: Path) -> None:
    case = generate_case(0, 1, SMALL_GRID, min_nodules=1)
    hu = render_volume(case)[20:36, 32:96, 32:96]
    positions = grid_positions(SMALL_GRID)[20:36]
    plain = _write(tmp_path / "plain", "p", positions, hu=hu, pixel_spacing=(2.7, 2.7))
    reference = load_volume(plain).array()
    assert reference.min() < -800 and reference.max() > -200  # lung and soft tissue in the crop
    for syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        folder = tmp_path / syntax.name.replace(" ", "_")
        folder.mkdir()
        for path in plain:
            ds = pydicom.dcmread(path)
            ds.compress(syntax)
            ds.save_as(folder / path.name, enforce_file_format=True)
        assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(load_volume([folder]).array(), reference, err_msg=syntax.name)


def _tilted(n: int, spacing: float, degrees: float) -> tuple[np.ndarray, tuple[float, ...]]:
    t = math.radians(degrees)
    return _axial(n, spacing), (1.0, 0.0, 0.0, 0.0, math.cos(t), math.sin(t))


@pytest.mark.parametrize("problem, expected", [
    ("irregular", "irregular-spacing"), ("missing", "missing-slices"), ("tilt", "gantry-tilt"),
    ("mixed", "mixed-series"), ("few", "too-few-slices"), ("sagittal", "not-axial"),
])
def test_unusable_geometry_gives_its_reason_code(tmp_path: Path, problem: str, expected: str) -> None:
    orientation: tuple[float, ...] = AXIAL
    positions = _axial(20, 1.0)
    if problem == "irregular":
        positions[10:, 2] += 0.4  # one gap of 1.4 mm among 1 mm gaps
    elif problem == "missing":
        positions = np.delete(positions, [7, 8], axis=0)
    elif problem == "tilt":
        positions, orientation = _tilted(20, 1.0, 15.0)
    elif problem == "few":
        positions = positions[:5]
    elif problem == "sagittal":
        orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        positions = np.asarray([[k * 1.0, -50.0, 50.0] for k in range(20)])
    paths = _write(tmp_path, "s", positions, orientation=orientation)
    if problem == "mixed":  # a second stack at the same positions under the same Series Instance UID
        paths += _write(tmp_path / "again", "s", positions, sop_uids=[deterministic_uid("dup", k) for k in
                                                                     range(20)])
    headers = [read_header(p) for p in paths]
    with pytest.raises(VolumeError) as refused:
        stack_series(headers)
    assert refused.value.reason_code == expected
    assert "SYNTH1" not in str(refused.value) and "Phantom" not in str(refused.value)
    with pytest.raises(VolumeError) as study:
        load_volume(paths)
    assert study.value.reason_code == "no-series" and expected in study.value.words


def test_small_gantry_tilt_within_the_limit_is_accepted(tmp_path: Path) -> None:
    positions, orientation = _tilted(16, 1.0, 0.5)
    volume = load_volume(_write(tmp_path, "s", positions, orientation=orientation))
    assert volume.image.GetSize()[2] == 16
    with pytest.raises(VolumeError, match="gantry-tilt"):
        stack_series(volume.stack.slices, SeriesCriteria(max_gantry_tilt_deg=0.2))


def test_pydicom_data_ct_single_slices_are_refused_with_a_reason() -> None:
    from pydicom.data import get_testdata_file

    # pydicom-data holds single CT slices only (CT_small, 693_*: one instance per series), no multi-slice series.
    for name in ("CT_small.dcm", "693_J2KR.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        header = read_header(Path(str(path)))
        with pytest.raises(VolumeError) as refused:
            select_series([header])
        assert refused.value.reason_code == "no-series"
        assert "too-few-slices" in refused.value.words
        with pytest.raises(VolumeError) as stacked:
            stack_series([header])
        assert stacked.value.reason_code == "too-few-slices"
        assert pydicom.dcmread(path).pixel_array.size > 0  # the file itself decodes: the refusal is geometric


def test_criteria_from_a_bundle_mapping_are_checked() -> None:
    criteria = SeriesCriteria.from_mapping({"min_slices": 32, "spacing_tolerance": 0.05,
                                            "excluded_image_types": ["localizer", "derived"]})
    assert (criteria.min_slices, criteria.spacing_tolerance) == (32, 0.05)
    assert criteria.excluded_image_types == ("LOCALIZER", "DERIVED")
    with pytest.raises(ValueError, match="min_slice"):
        SeriesCriteria.from_mapping({"min_slice": 3})
    with pytest.raises(ValueError, match="'min_slices' must be like 16"):
        SeriesCriteria.from_mapping({"min_slices": "many"})
