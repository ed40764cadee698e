"""Age and sex of the patient as a series' DICOM header states them, for models that take them as inputs.

Header fields only (no pixels, no EHR): Patient's Age (AS, "065Y", "018M", "010W", "003D"), else the whole years
between Patient's Birth Date and the Study (or Series, Acquisition) Date; Patient's Sex "M" or "F". Anything else is
unknown (None), which a model sees as missing.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

__all__ = ["age_years", "patient_sex", "series_demographics"]

_AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


def _date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def age_years(ds: Dataset) -> float | None:
    """The patient's age in years at the study, or None when the header does not say."""
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in _AGE_UNITS:
        return int(age[:3]) * _AGE_UNITS[age[3]]
    born = _date(ds.get("PatientBirthDate"))
    seen = next((d for d in (_date(ds.get(k)) for k in ("StudyDate", "SeriesDate", "AcquisitionDate")) if d), None)
    if born is None or seen is None or seen < born:
        return None
    return float(seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day)))


def patient_sex(ds: Dataset) -> str | None:
    """"M" or "F", or None for "O", empty or absent."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return sex if sex in ("M", "F") else None


def series_demographics(path: Path) -> tuple[float | None, str | None]:
    """(age in years, sex) from the header of ``path``, one instance of the series (pixels are not read)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return age_years(ds), patient_sex(ds)
