"""The 3D part of a finding in our TID 1500 SR: its box in patient coordinates as a TID 1411 volume surface (one
SCOORD3D ELLIPSOID in the frame of reference) and its long-axis diameter (mm), and reading both back.

``sr`` builds the finding's TID 1410 groups on the slice through the centre (what 2D viewers draw) and calls this
module for the rest; all three groups share the finding's Tracking Unique Identifier. No I/O, no pixels.

Why an ELLIPSOID in TID 1411 and not a SCOORD3D POLYGON in TID 1410: a TID 1410 region is planar, so the axial
rectangle through the centre would drop the box's extent along the slice normal, and TID 1411's "Volume Surface"
allows only ELLIPSOID (one item) or a stack of planar POLYGONs/ELLIPSEs. The axis-aligned ellipsoid inscribed in the
box states it exactly (its axis end points are the centres of the box's faces, so the box is their bounding box),
in one item, and is also the shape a nodule has. highdicom writes it (``VolumeSurface``) and reads it back.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from pydicom import Dataset

from node.results import coding
from node.results.slices import distance_from_centre
from pipelines.base import Finding, PatientBox


def long_axis_mm(box: PatientBox) -> float:
    """The long-axis diameter: the larger in-plane extent of the box, x (right-left) or y (anterior-posterior).

    Measured in the axial plane as lung nodules are (Fleischner, Lung-RADS: the long axis on the axial image); the
    cranio-caudal extent is not part of it. The box is axis-aligned, so this is the larger side of its axial
    cross-section, not its diagonal.
    """
    return float(max(box.x1 - box.x0, box.y1 - box.y0))


def long_axis_measurement(finding: Finding) -> hd.sr.Measurement:
    """The long axis as a TID 300 NUM (SCT 103339001 "Long axis", CID 7470), UCUM mm, for the finding's group."""
    if finding.volume_box is None:
        raise ValueError(f"{finding.tracking_id}: a long axis needs the finding's volume_box")
    return hd.sr.Measurement(
        name=coding.LONG_AXIS, value=round(long_axis_mm(finding.volume_box), 3), unit=coding.MILLIMETRE
    )


def ellipsoid_points(box: PatientBox) -> np.ndarray:
    """(6, 3) LPS mm: the end points of the inscribed ellipsoid's axes, longest axis first (PS3.3 C.18.9.1.2 lists
    the major axis, then the minor axis, then the third)."""
    lo = np.array([box.x0, box.y0, box.z0], dtype=np.float64)
    hi = np.array([box.x1, box.y1, box.z1], dtype=np.float64)
    centre = (lo + hi) / 2
    points: list[np.ndarray] = []
    # stable sort: equal extents keep x, y, z order, so the same box always gives the same points
    for axis in sorted(range(3), key=lambda a: -(hi[a] - lo[a])):
        for end in (lo, hi):
            point = centre.copy()
            point[axis] = end[axis]
            points.append(point)
    return np.stack(points)


def _check_geometry(finding: Finding, box: PatientBox, source: Dataset) -> None:
    """The slice the 2D region is on shares the box's frame of reference and cuts through the box."""
    frame = str(source.get("FrameOfReferenceUID", ""))
    if frame != box.frame_of_reference_uid:
        raise ValueError(
            f"{finding.tracking_id}: volume_box is in frame of reference {box.frame_of_reference_uid}, its image "
            f"{finding.sop_instance_uid} in {frame or 'none'}; the box must be given in the image's frame of reference"
        )
    where = distance_from_centre(box, source)
    if where is None:
        raise ValueError(f"{finding.tracking_id}: image {finding.sop_instance_uid} lacks Image Position/Orientation "
                         "(Patient) or Pixel Spacing, so a 3D finding cannot be placed on it")
    distance, half = where
    if distance > half + 1e-3:
        raise ValueError(
            f"{finding.tracking_id}: image {finding.sop_instance_uid} lies {distance:.2f} mm from the box centre, "
            f"outside the box (half-extent {half:.2f} mm along the slice normal); give the slice through the centre"
        )


def volume_group(
    finding: Finding,
    source: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    site: hd.sr.FindingSite | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The TID 1411 group of a 3D finding: its volume_box as an ELLIPSOID (see the module docstring) in the frame of
    reference of ``source`` (the slice its 2D region is on), derived from that slice's series."""
    box = finding.volume_box
    if box is None:
        raise ValueError(f"{finding.tracking_id}: not a 3D finding (no volume_box)")
    _check_geometry(finding, box, source)
    surface = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.ELLIPSOID,
        graphic_data=ellipsoid_points(box).astype(np.float32),
        frame_of_reference_uid=box.frame_of_reference_uid,
        source_series=hd.sr.SourceSeriesForSegmentation(str(source.SeriesInstanceUID)),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=finding.tracking_uid, identifier=finding.tracking_id),
        referenced_volume_surface=surface,
        finding_type=coding.FINDING_TYPE,
        algorithm_id=algorithm,
        finding_sites=[site] if site is not None else None,
    )


# --- reading back ---------------------------------------------------------------------------------------------


def read_volume_box(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations) -> PatientBox:
    """The box a TID 1411 group of ours states: the bounding box of its ELLIPSOID's axis end points."""
    items = [
        hd.sr.Scoord3DContentItem.from_dataset(item)
        for item in group[0].ContentSequence
        if item.ValueType == "SCOORD3D" and item.ConceptNameCodeSequence[0].CodeValue == "121231"
    ]
    if len(items) != 1 or items[0].graphic_type != hd.sr.GraphicTypeValues3D.ELLIPSOID:
        raise ValueError(f"group {group.tracking_identifier!r}: expected one ELLIPSOID volume surface, "
                         f"found {[str(i.graphic_type.value) for i in items]}")
    points = np.asarray(items[0].value, dtype=np.float64).reshape(-1, 3)
    lo, hi = points.min(axis=0), points.max(axis=0)
    return PatientBox(str(items[0].frame_of_reference_uid), *(float(v) for v in (*lo, *hi)))


def read_long_axis(measurements: list[hd.sr.Measurement], where: str) -> float | None:
    """The long axis (mm) among a finding's measurements, None when it has none."""
    name = (coding.LONG_AXIS.value, coding.LONG_AXIS.scheme_designator)
    found = [m for m in measurements if (m.name.value, m.name.scheme_designator) == name]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"{where}: expected at most one '{coding.LONG_AXIS.meaning}', found {len(found)}")
    unit = found[0].unit
    if unit.value != coding.MILLIMETRE.value:
        raise ValueError(f"{where}: '{coding.LONG_AXIS.meaning}' in {unit.value!r}, expected mm")
    value = float(found[0].value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: '{coding.LONG_AXIS.meaning}' is not a number")
    return value
