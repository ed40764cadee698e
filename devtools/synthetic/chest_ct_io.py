"""Write the chest CT cohort: CT Image Storage series (pydicom), a FHIR R4 Bundle per patient, and a 3D datalist.

``ct_series_datasets`` writes any stack geometry (tests use it for tilted, feet-first, gapped or mixed series);
``write_chest_ct_cohort`` writes ``<out>/<PatientID>/<SOPInstanceUID>.dcm``, ``<out>/<PatientID>.fhir.json`` and
``<out>/datalist.json`` (box_mode "xyzxyz", LPS mm, with each box's oracle). UIDs are uuid5 of (seed, index, role),
so the same seed writes the same files.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from devtools.synthetic.chest_ct import (
    DEFAULT_SPLIT,
    LAB_MODELS,
    LABELS,
    SMALL_GRID,
    ChestCase,
    Grid,
    generate_case,
    render_volume,
)
from devtools.synthetic.cohort_io import IMPLEMENTATION_CLASS_UID, deterministic_uid

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MRN_SYSTEM = "urn:dicom-ai-node:synthetic-mrn"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass(frozen=True)
class SeriesInfo:
    """Who and what a written series belongs to (synthetic identities only)."""

    patient_id: str
    patient_name: str
    birth_date: str  # YYYYMMDD
    sex: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    study_date: str = "20250101"
    series_number: int = 1
    series_description: str = "CHEST 1.0 mm"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    age: str = ""  # Patient's Age, e.g. "065Y"; empty: not written


def ct_series_datasets(hu: np.ndarray, positions: np.ndarray, info: SeriesInfo,
                       orientation: Sequence[float] = AXIAL, pixel_spacing: tuple[float, float] = (0.7, 0.7),
                       slice_thickness: float | None = None, rescale: tuple[float, float] = (1.0, -1024.0),
                       instance_numbers: Sequence[int] | None = None, sop_uids: Sequence[str] | None = None,
                       gantry_tilt_deg: float = 0.0) -> list[Dataset]:
    """One CT Image Storage dataset per plane of ``hu`` ((z, y, x), HU) at ``positions`` ((z, 3) LPS mm, the centre
    of each slice's first pixel), stored as unsigned 12-bit values (HU - intercept) / slope, explicit VR little
    endian, with Image Orientation/Position (Patient), Slice Thickness, Rescale, a lung window and Body Part CHEST."""
    slope, intercept = rescale
    stored = np.clip(np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope), 0, 4095).astype("<u2")
    n = stored.shape[0]
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n + 1))
    uids = list(sop_uids) if sop_uids is not None else [deterministic_uid(info.series_uid, "sop", k) for k in
                                                          range(n)]
    thickness = slice_thickness if slice_thickness is not None else (
        float(np.linalg.norm(positions[1] - positions[0])) if n > 1 else 1.0)
    datasets = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(uids[k])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(info.image_type)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = uids[k]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = info.study_date
        ds.StudyTime, ds.SeriesTime, ds.ContentTime = "101500", "101500", "101530"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "dicom-ai-node synthetic"
        ds.ManufacturerModelName = "Phantom CT"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT CHEST"
        ds.SeriesDescription = info.series_description
        ds.PatientName = info.patient_name
        ds.PatientID = info.patient_id
        ds.PatientBirthDate = info.birth_date
        if info.age:
            ds.PatientAge = info.age
        ds.PatientSex = info.sex
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST"
        ds.KVP = 120
        ds.GantryDetectorTilt = gantry_tilt_deg
        ds.ConvolutionKernel = "STANDARD"
        ds.StudyInstanceUID = info.study_uid
        ds.SeriesInstanceUID = info.series_uid
        ds.FrameOfReferenceUID = info.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.StudyID = "1"
        ds.SeriesNumber = info.series_number
        ds.InstanceNumber = numbers[k]
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in positions[k]]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
        ds.SliceThickness = round(thickness, 3)
        ds.SliceLocation = round(float(positions[k][2]), 4)
        ds.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.WindowCenterWidthExplanation = "LUNG"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        datasets.append(ds)
    return datasets


def grid_positions(grid: Grid) -> np.ndarray:
    """(n_slices, 3): the position of each slice's first pixel on ``grid`` (axial, instance 1 most superior)."""
    x0 = float(grid.x()[0])
    return np.asarray([[x0, x0, float(zk)] for zk in grid.z()])


def series_info(case: ChestCase) -> SeriesInfo:
    # Born on the study's day and month (28 Feb for a 29 Feb study), so the header's age is exactly age_years.
    birth_year = int(case.study_date[:4]) - case.age_years
    month_day = "0228" if case.study_date[4:] == "0229" else case.study_date[4:]
    return SeriesInfo(
        patient_id=case.patient_id, patient_name=f"Phantom^Chest{case.index + 1}",
        birth_date=f"{birth_year}{month_day}", age=f"{case.age_years:03d}Y", sex=case.sex,
        study_uid=deterministic_uid(case.seed, case.index, "ct-study"),
        series_uid=deterministic_uid(case.seed, case.index, "ct-series"),
        frame_of_reference_uid=deterministic_uid(case.seed, case.index, "ct-frame"),
        study_date=case.study_date, series_description=f"CHEST {case.grid.slice_mm:g} mm")


def case_datasets(case: ChestCase) -> list[Dataset]:
    """The case's rendered phantom as one axial CT series."""
    grid = case.grid
    return ct_series_datasets(render_volume(case), grid_positions(grid), series_info(case),
                              pixel_spacing=(grid.pixel_mm, grid.pixel_mm), slice_thickness=grid.slice_mm)


def fhir_bundle(case: ChestCase) -> dict[str, Any]:
    """A FHIR R4 transaction Bundle: Patient (sex, birth date), one Observation per tumour marker present, and the
    note as a DocumentReference."""
    patient_url = f"urn:uuid:{_uuid(case, 'patient')}"
    subject = {"reference": patient_url}
    day = date(int(case.study_date[:4]), int(case.study_date[4:6]), int(case.study_date[6:]))
    info = series_info(case)
    entries: list[dict[str, Any]] = [{
        "fullUrl": patient_url,
        "resource": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": case.patient_id}],
                     "name": [{"family": "Phantom", "given": [f"Chest{case.index + 1}"]}],
                     "birthDate": f"{info.birth_date[:4]}-{info.birth_date[4:6]}-{info.birth_date[6:]}",
                     "gender": "male" if case.sex == "M" else "female"},
        "request": {"method": "POST", "url": "Patient"},
    }]
    for n, lab in enumerate(LAB_MODELS):
        if lab.loinc not in case.labs:
            continue
        effective = day - timedelta(days=3 + n)
        entries.append({
            "fullUrl": f"urn:uuid:{_uuid(case, 'obs', lab.loinc)}",
            "resource": {
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory",
                                          "display": "Laboratory"}]}],
                "code": {"coding": [{"system": LOINC, "code": lab.loinc, "display": lab.display}],
                         "text": lab.display},
                "subject": subject, "effectiveDateTime": f"{effective.isoformat()}T08:30:00Z",
                "valueQuantity": {"value": case.labs[lab.loinc], "unit": lab.unit, "system": UCUM,
                                  "code": lab.unit},
            },
            "request": {"method": "POST", "url": "Observation"},
        })
    if case.note is not None:
        entries.append({
            "fullUrl": f"urn:uuid:{_uuid(case, 'note')}",
            "resource": {
                "resourceType": "DocumentReference", "status": "current",
                "type": {"coding": [{"system": LOINC, "code": "11506-3", "display": "Progress note"}]},
                "subject": subject, "date": f"{(day - timedelta(days=1)).isoformat()}T16:00:00Z",
                "content": [{"attachment": {"contentType": "text/plain",
                                            "data": base64.b64encode(case.note.encode()).decode("ascii")}}],
            },
            "request": {"method": "POST", "url": "DocumentReference"},
        })
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _uuid(case: ChestCase, *parts: object) -> str:
    import uuid

    return str(uuid.uuid5(uuid.UUID("5b0c3f4e-8f7e-5d2a-9c1b-2f6a7e3d9c10"), ":".join(
        str(p) for p in (case.seed, case.index, *parts))))


def write_case(case: ChestCase, out: Path) -> tuple[Path, Path]:
    """Write the case's series under ``out/<PatientID>/`` and its bundle as ``out/<PatientID>.fhir.json``."""
    folder = out / case.patient_id
    folder.mkdir(parents=True, exist_ok=True)
    for ds in case_datasets(case):
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    fhir = out / f"{case.patient_id}.fhir.json"
    fhir.write_text(json.dumps(fhir_bundle(case), indent=1))
    return folder, fhir


def write_chest_ct_cohort(out_dir: Path, n_patients: int, seed: int, split: Sequence[float] = DEFAULT_SPLIT,
                          grid: Grid | None = None, progress: bool = False) -> Path:
    """Write ``n_patients`` chest CT cases and ``datalist.json`` (3D items: the image is the series folder, boxes
    "xyzxyz" in LPS mm, labels into LABELS, an oracle row per box), split by patient. ``grid`` None: 512 x 512 with
    a drawn slice spacing; SMALL_GRID for tests. Returns the datalist's path."""
    from pipelines.common.datalist import DatalistItem, write_datalist

    if n_patients < 1:
        raise ValueError(f"n_patients (--n-patients) must be at least 1, got {n_patients}")
    fractions = np.asarray(split, dtype=np.float64)
    if fractions.shape != (3,) or np.any(fractions < 0) or fractions.sum() <= 0:
        raise ValueError(f"split (--split) must be three non-negative fractions, got {list(split)}")
    counts = np.floor(fractions / fractions.sum() * n_patients).astype(int)
    counts[0] += n_patients - counts.sum()
    order = np.random.default_rng([seed, n_patients, 7919]).permutation(n_patients)
    names = ["training"] * counts[0] + ["validation"] * counts[1] + ["test"] * counts[2]
    split_of = {int(i): name for i, name in zip(order, names)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[DatalistItem]] = {"training": [], "validation": [], "test": []}
    indices: Any = range(n_patients)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="patients", unit="patient")
    for index in indices:
        case = generate_case(seed, index, grid)
        folder, fhir = write_case(case, out)
        splits[split_of[index]].append(DatalistItem(
            image=folder, patient_id=case.patient_id, fhir=fhir,
            boxes=np.asarray([n.box for n in case.nodules], dtype=np.float64).reshape(-1, 6),
            labels=np.full(len(case.nodules), case.label, dtype=np.int64),
            oracle=np.asarray([n.oracle for n in case.nodules], dtype=np.float64).reshape(-1, len(LABELS))))
    return write_datalist(out / "datalist.json", LABELS, splits, box_mode="xyzxyz",
                          name=f"synthetic-chest-ct-seed{seed}",
                          description="Synthetic chest CT phantoms with lung nodules (devtools/synthetic/README.md)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.synthetic.chest_ct_io",
                                     description="Write a synthetic chest CT cohort as a 3D site datalist.")
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--n-patients", type=int, default=20, help="patients to write (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed: the same seed gives the same files")
    parser.add_argument("--split", type=float, nargs=3, default=list(DEFAULT_SPLIT), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--small", action="store_true",
                        help=f"{SMALL_GRID.size}x{SMALL_GRID.size}x{SMALL_GRID.n_slices} grid "
                             f"({SMALL_GRID.slice_mm} mm slices) instead of 512x512, 1-2.5 mm")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        path = write_chest_ct_cohort(args.out, args.n_patients, args.seed, args.split,
                                     SMALL_GRID if args.small else None, progress=not args.quiet)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
