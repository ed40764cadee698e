"""CT series to volume: choose the series of a study, stack its slices into a SimpleITK image in HU with its patient
geometry, resample it, and map model voxels back to patient coordinates (LPS, mm) and to source pixels.

Pure functions of the files given: no networking, no database, no file output. Every refusal is a
:class:`VolumeError` with a reason code the SR can state; its words never hold patient identifiers.

Thresholds (each a field of :class:`SeriesCriteria`, so a bundle can declare its own):

* **irregular-spacing**: a gap between neighbouring slice positions (projected on the slice normal) deviates from
  the median gap by more than ``spacing_tolerance`` (10 %) and is not a whole multiple of it.
* **missing-slices**: a gap is k >= 2 times the median gap (within the same 10 %): slices are absent, not irregular.
* **gantry-tilt**: the line through the slice positions leaves the slice normal by more than
  ``max_gantry_tilt_deg`` (1 deg). Tilted stacks are refused, not resampled: a shear correction would move
  every source pixel and the mapping back to (SOP instance, column, row) would no longer be exact.
* **not-axial**: the slice normal is more than ``max_obliquity_deg`` (10 deg) from the patient's foot-head axis.
* **mixed-series**: one Series Instance UID holding more than one stack (orientations, matrix sizes, pixel
  spacings or frames of reference that differ, or two slices at the same position).
* **too-few-slices**: fewer than ``min_slices`` (16) slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from numpy.typing import ArrayLike

from pipelines.base import PatientBox

REASONS: Mapping[str, str] = {
    "unreadable": "a file is not DICOM or cannot be read",
    "wrong-modality": "the series is not of the modality the pipeline reads",
    "localizer": "the series is a localizer (scout)",
    "derived": "the series is derived or secondary (reformats, projections, maps), not original primary",
    "no-geometry": "Image Position/Orientation (Patient) or Pixel Spacing is absent",
    "not-axial": "the slices are not axial",
    "too-few-slices": "the series has too few slices for a volume",
    "irregular-spacing": "the slice positions are irregularly spaced",
    "missing-slices": "slices are missing from the series",
    "gantry-tilt": "the series was acquired with gantry tilt",
    "mixed-series": "the series holds more than one stack of slices",
    "undecodable": "the pixel data cannot be decoded",
    "not-selected": "another series of the study fits better (thinner slices, then more instances)",
    "no-series": "no series of the study can be made into a volume",
    "outside-volume": "a point lies outside the source slices",
}


class VolumeError(ValueError):
    """A series that cannot be made into a volume (or a point outside it); ``reason_code`` is a key of
    :data:`REASONS`, ``words`` say what was found, without patient identifiers."""

    def __init__(self, reason_code: str, words: str) -> None:
        if reason_code not in REASONS:
            raise ValueError(f'Argument "reason_code" must be one of {sorted(REASONS)}, not {reason_code!r}.')
        super().__init__(f"{reason_code}: {words}")
        self.reason_code = reason_code
        self.words = words


@dataclass(frozen=True)
class SeriesCriteria:
    """What a series must be to become a volume, and how it is chosen among several."""

    modality: str = "CT"
    excluded_image_types: tuple[str, ...] = ("LOCALIZER", "DERIVED", "SECONDARY", "REFORMATTED", "MPR",
                                             "PROJECTION IMAGE", "MIP")
    min_slices: int = 16
    spacing_tolerance: float = 0.10
    max_gantry_tilt_deg: float = 1.0
    max_obliquity_deg: float = 10.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], where: str = "series_selection") -> SeriesCriteria:
        """Criteria as a bundle declares them (a JSON object with any of the field names); unknown keys and bad
        values raise ValueError naming the key."""
        defaults = cls()
        known = {f: getattr(defaults, f) for f in cls.__dataclass_fields__}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; the keys are {sorted(known)}")
        values: dict[str, object] = {}
        for key, value in raw.items():
            default = known[key]
            try:
                if isinstance(default, tuple):
                    if isinstance(value, str) or not isinstance(value, (list, tuple)):
                        raise TypeError
                    values[key] = tuple(str(v).upper() for v in value)
                elif isinstance(default, str):
                    if not isinstance(value, str):
                        raise TypeError
                    values[key] = value
                else:
                    number = type(default)(value)  # type: ignore[call-arg]
                    if number < 0 or isinstance(value, bool):
                        raise ValueError
                    values[key] = number
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {key!r} must be like {default!r}, not {value!r}") from None
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SliceHeader:
    """The header fields of one stored instance that series selection and stacking need (no pixels)."""

    path: Path
    sop_instance_uid: str
    series_instance_uid: str
    modality: str
    image_type: tuple[str, ...]
    frame_of_reference_uid: str
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing), mm
    rows: int
    columns: int
    slice_thickness: float | None
    instance_number: int | None


def _floats(value: object, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def read_header(path: Path) -> SliceHeader:
    """The :class:`SliceHeader` of one file (pixels are not read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises several types for a bad file; the reason is the same
        raise VolumeError("unreadable", f"{Path(path).name}: {type(exc).__name__}") from None
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    thickness = ds.get("SliceThickness")
    number = ds.get("InstanceNumber")
    return SliceHeader(
        path=Path(path), sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")), modality=str(ds.get("Modality", "")),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        position=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        pixel_spacing=spacing,  # type: ignore[arg-type]
        rows=int(ds.get("Rows", 0)), columns=int(ds.get("Columns", 0)),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        instance_number=int(number) if number not in (None, "") else None,
    )


@dataclass(frozen=True)
class Stack:
    """The slices of one series sorted by position along the slice normal, with the geometry they share."""

    slices: tuple[SliceHeader, ...]
    origin: np.ndarray  # (3,) LPS mm: the centre of the first pixel of the first slice
    direction: np.ndarray  # (3, 3) columns: row direction (along columns), column direction (along rows), normal
    spacing: np.ndarray  # (3,) mm: column spacing, row spacing, slice spacing

    @property
    def slice_thickness(self) -> float:
        declared = self.slices[0].slice_thickness
        return declared if declared and declared > 0 else float(self.spacing[2])


def stack_series(headers: Sequence[SliceHeader], criteria: SeriesCriteria = SeriesCriteria()) -> Stack:
    """Sort one series' slices by their position projected on the slice normal (never by Instance Number) and check
    that they form one regular, untilted, axial stack; raise :class:`VolumeError` with the reason otherwise."""
    if not headers:
        raise VolumeError("no-series", "no instances were given")
    first = headers[0]
    for h in headers:
        if h.position is None or h.orientation is None or h.pixel_spacing is None:
            raise VolumeError("no-geometry", f"instance {h.instance_number}: Image Position/Orientation (Patient) "
                                             "or Pixel Spacing is absent")
    assert first.orientation is not None and first.pixel_spacing is not None  # checked above, for mypy
    orientation = np.asarray(first.orientation)
    for h in headers:
        same_orientation = np.allclose(np.asarray(h.orientation), orientation, atol=1e-3)
        if (not same_orientation or (h.rows, h.columns) != (first.rows, first.columns)
                or not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=1e-3)  # type: ignore[arg-type]
                or h.frame_of_reference_uid != first.frame_of_reference_uid):
            raise VolumeError("mixed-series", "the instances differ in orientation, matrix size, pixel spacing or "
                                              "frame of reference")
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    positions = np.asarray([h.position for h in headers], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    ordered = tuple(headers[int(i)] for i in order)
    if len(ordered) < criteria.min_slices:
        raise VolumeError("too-few-slices", f"{len(ordered)} slices, at least {criteria.min_slices} are needed")
    gaps = np.diff(along)
    if np.any(gaps < 0.01):
        raise VolumeError("mixed-series", "two or more slices lie at the same position (more than one stack)")
    step = float(np.median(gaps))
    ratio = gaps / step
    off = np.abs(ratio - 1.0) > criteria.spacing_tolerance
    if np.any(off):
        whole = np.round(ratio[off])
        if np.all(whole >= 2) and np.all(np.abs(ratio[off] - whole) <= criteria.spacing_tolerance):
            missing = int(np.sum(whole - 1))
            raise VolumeError("missing-slices", f"about {missing} slice(s) missing from a {step:.2f} mm spacing")
        raise VolumeError("irregular-spacing", f"slice gaps range {gaps.min():.2f}-{gaps.max():.2f} mm around "
                                               f"{step:.2f} mm (tolerance {criteria.spacing_tolerance:.0%})")
    through = positions[-1] - positions[0]
    cos_tilt = float(np.clip(abs(through @ normal) / np.linalg.norm(through), -1.0, 1.0))
    tilt = math.degrees(math.acos(cos_tilt))
    if tilt > criteria.max_gantry_tilt_deg:
        raise VolumeError("gantry-tilt", f"slices advance {tilt:.1f} deg off their normal (limit "
                                         f"{criteria.max_gantry_tilt_deg} deg); tilted stacks are not resampled")
    obliquity = math.degrees(math.acos(float(np.clip(abs(normal[2]), -1.0, 1.0))))
    if obliquity > criteria.max_obliquity_deg:
        raise VolumeError("not-axial", f"slice normal {obliquity:.0f} deg from the foot-head axis (limit "
                                       f"{criteria.max_obliquity_deg} deg)")
    spacing = np.asarray([first.pixel_spacing[1], first.pixel_spacing[0], step])
    return Stack(ordered, positions[0].copy(), np.column_stack([row_dir, col_dir, normal]), spacing)


@dataclass(frozen=True)
class SeriesChoice:
    """The series chosen for the volume, its sorted stack, and why each other series of the study was not."""

    series_instance_uid: str
    stack: Stack
    rejected: Mapping[str, VolumeError] = field(default_factory=dict)  # Series Instance UID -> reason


def _image_type_reason(headers: Sequence[SliceHeader], criteria: SeriesCriteria) -> VolumeError | None:
    kinds = {v for h in headers for v in h.image_type}
    if "LOCALIZER" in kinds:
        return VolumeError("localizer", "Image Type says LOCALIZER")
    excluded = sorted(kinds & set(criteria.excluded_image_types))
    types = [h.image_type for h in headers]
    if excluded or any(t[:2] != ("ORIGINAL", "PRIMARY") for t in types if t):
        return VolumeError("derived", f"Image Type is {'/'.join(types[0]) or 'absent'}, not ORIGINAL/PRIMARY")
    return None


def select_series(headers: Iterable[SliceHeader], criteria: SeriesCriteria = SeriesCriteria()) -> SeriesChoice:
    """Choose, among a study's series, the one to make a volume from: of the modality, original primary (not a
    localizer or derived), stackable (:func:`stack_series`); then the thinnest slices, then the most instances, then
    the lowest Series Instance UID (so the choice is deterministic). Every other series gets its reason."""
    by_series: dict[str, list[SliceHeader]] = {}
    for h in headers:
        by_series.setdefault(h.series_instance_uid, []).append(h)
    rejected: dict[str, VolumeError] = {}
    candidates: list[tuple[float, int, str, Stack]] = []
    for uid, members in sorted(by_series.items()):
        modalities = {h.modality.upper() for h in members}
        if modalities != {criteria.modality.upper()}:
            rejected[uid] = VolumeError("wrong-modality", f"modality {'/'.join(sorted(modalities))}, the pipeline "
                                                          f"reads {criteria.modality}")
            continue
        reason = _image_type_reason(members, criteria)
        if reason is not None:
            rejected[uid] = reason
            continue
        try:
            stack = stack_series(members, criteria)
        except VolumeError as exc:
            rejected[uid] = exc
            continue
        candidates.append((round(stack.slice_thickness, 3), -len(members), uid, stack))
    if not candidates:
        summary = "; ".join(sorted({e.reason_code for e in rejected.values()})) or "no instances"
        raise VolumeError("no-series", f"{len(by_series)} series, none usable ({summary})")
    candidates.sort(key=lambda c: (c[0], c[1], c[2]))
    thickness, _, chosen, stack = candidates[0]
    for other_thickness, minus_n, uid, _ in candidates[1:]:
        rejected[uid] = VolumeError("not-selected", f"{other_thickness:g} mm slices x {-minus_n}, the chosen series "
                                                    f"has {thickness:g} mm x {len(stack.slices)}")
    return SeriesChoice(chosen, stack, rejected)


@dataclass(frozen=True)
class SourcePixel:
    """A point on a source slice: its SOP Instance UID and the (column, row) pixel coordinates, 0-based, continuous
    (pixel centres at whole numbers)."""

    sop_instance_uid: str
    column: float
    row: float


def _matrix(origin: np.ndarray, direction: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(origin, dtype=np.float64), np.asarray(direction, dtype=np.float64) @ np.diag(spacing)


@dataclass(frozen=True)
class Volume:
    """A CT volume in HU (float32) with its geometry, and the stack it came from so that any voxel, after any
    resampling, maps back to the source slice and pixel. SimpleITK axes: x = column, y = row, z = slice."""

    image: sitk.Image
    stack: Stack
    series_instance_uid: str

    @property
    def frame_of_reference_uid(self) -> str:
        return self.stack.slices[0].frame_of_reference_uid

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """Of the source slices, in stack order (z index of the unresampled volume)."""
        return tuple(h.sop_instance_uid for h in self.stack.slices)

    def array(self) -> np.ndarray:
        """(z, y, x) HU, float32 (a copy)."""
        return sitk.GetArrayFromImage(self.image)

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        return _matrix(np.asarray(self.image.GetOrigin()), np.asarray(self.image.GetDirection()).reshape(3, 3),
                       np.asarray(self.image.GetSpacing()))

    def index_to_patient(self, ijk: ArrayLike) -> np.ndarray:
        """(n, 3) continuous voxel indices (x, y, z order) -> (n, 3) LPS mm."""
        origin, m = self._affine()
        return np.atleast_2d(np.asarray(ijk, dtype=np.float64)) @ m.T + origin

    def patient_to_index(self, xyz: ArrayLike) -> np.ndarray:
        """(n, 3) LPS mm -> (n, 3) continuous voxel indices of this volume (x, y, z order)."""
        origin, m = self._affine()
        return np.linalg.solve(m, (np.atleast_2d(np.asarray(xyz, dtype=np.float64)) - origin).T).T

    def patient_to_source(self, xyz: ArrayLike) -> list[SourcePixel]:
        """The nearest source slice of each point and the point's (column, row) on it; a point more than half a
        slice (or pixel) beyond the source slices raises ``outside-volume``."""
        origin, m = _matrix(self.stack.origin, self.stack.direction, self.stack.spacing)
        index = np.linalg.solve(m, (np.atleast_2d(np.asarray(xyz, dtype=np.float64)) - origin).T).T
        n = len(self.stack.slices)
        columns, rows = self.stack.slices[0].columns, self.stack.slices[0].rows
        out = []
        for column, row, k in index:
            nearest = int(np.rint(k))
            if not 0 <= nearest < n:
                raise VolumeError("outside-volume", f"slice index {k:.1f} is outside 0..{n - 1}")
            if not (-0.5 <= column <= columns - 0.5 and -0.5 <= row <= rows - 0.5):
                raise VolumeError("outside-volume", f"pixel ({column:.1f}, {row:.1f}) is outside the "
                                                    f"{columns} x {rows} slice")
            out.append(SourcePixel(self.stack.slices[nearest].sop_instance_uid, float(column), float(row)))
        return out

    def index_to_source(self, ijk: ArrayLike) -> list[SourcePixel]:
        return self.patient_to_source(self.index_to_patient(ijk))

    def patient_box(self, ijk_min: Sequence[float], ijk_max: Sequence[float]) -> PatientBox:
        """The axis-aligned LPS box (mm) around a box of voxel indices (its eight corners), for ``Finding``."""
        lo, hi = np.asarray(ijk_min, dtype=np.float64), np.asarray(ijk_max, dtype=np.float64)
        corners = np.asarray([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                              for a in (0, 1) for b in (0, 1) for c in (0, 1)])
        xyz = self.index_to_patient(corners)
        x0, y0, z0 = xyz.min(axis=0)
        x1, y1, z1 = xyz.max(axis=0)
        return PatientBox(self.frame_of_reference_uid, float(x0), float(y0), float(z0), float(x1), float(y1),
                          float(z1))


def _hu(path: Path) -> np.ndarray:
    """One slice in HU: stored values x Rescale Slope + Rescale Intercept, decoded by pydicom with whichever of
    pylibjpeg (JPEG, JPEG 2000), pyjpegls (JPEG-LS) or its own RLE decoder the transfer syntax needs."""
    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as exc:  # a missing decoder and corrupt data raise several types; the reason is the same
        raise VolumeError("undecodable", f"{Path(path).name}: {type(exc).__name__}: {str(exc)[:120]}") from None
    if stored.ndim != 2:
        raise VolumeError("mixed-series", f"{Path(path).name} has {stored.ndim} dimensions; one frame per instance "
                                          "is read (multi-frame CT is not supported)")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)).astype(np.float32)


def load_stack(stack: Stack, series_instance_uid: str = "") -> Volume:
    """Decode the stack's slices into a :class:`Volume` (HU, float32) with the stack's geometry."""
    planes = [_hu(h.path) for h in stack.slices]
    shape = (stack.slices[0].rows, stack.slices[0].columns)
    if any(p.shape != shape for p in planes):
        raise VolumeError("mixed-series", "decoded slices differ in size from their Rows/Columns")
    image = sitk.GetImageFromArray(np.stack(planes))
    image.SetOrigin(tuple(float(v) for v in stack.origin))
    image.SetSpacing(tuple(float(v) for v in stack.spacing))
    image.SetDirection(tuple(float(v) for v in stack.direction.ravel()))
    return Volume(image, stack, series_instance_uid or stack.slices[0].series_instance_uid)


def load_volume(paths: Iterable[Path | str], criteria: SeriesCriteria = SeriesCriteria()) -> Volume:
    """Read the headers of a study's (or one series') files, choose the series (:func:`select_series`) and load it.
    A folder is read as all the files under it."""
    files: list[Path] = []
    for p in (Path(p) for p in paths):
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    choice = select_series([read_header(f) for f in files], criteria)
    return load_stack(choice.stack, choice.series_instance_uid)


def resample(volume: Volume, spacing_mm: Sequence[float], default_hu: float = -1024.0) -> Volume:
    """The volume on a grid of ``spacing_mm`` (x, y, z), same origin and direction, covering the same extent;
    linear interpolation, air outside. The source stack is kept, so mappings back to source pixels still hold."""
    new_spacing = np.asarray(spacing_mm, dtype=np.float64)
    if new_spacing.shape != (3,) or np.any(new_spacing <= 0):
        raise ValueError(f'Argument "spacing_mm" must be three positive numbers (x, y, z), not {spacing_mm!r}.')
    old_size = np.asarray(volume.image.GetSize())
    old_spacing = np.asarray(volume.image.GetSpacing())
    new_size = [max(1, int(round(v))) for v in old_size * old_spacing / new_spacing]
    image = sitk.Resample(volume.image, new_size, sitk.Transform(), sitk.sitkLinear, volume.image.GetOrigin(),
                          tuple(float(v) for v in new_spacing), volume.image.GetDirection(), float(default_hu),
                          sitk.sitkFloat32)
    return Volume(image, volume.stack, volume.series_instance_uid)
