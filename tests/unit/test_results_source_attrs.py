"""The header our objects inherit from a source image: valid values kept, invalid ones emptied or left out, UIDs kept,
the source untouched, and not a value in the logs."""

from __future__ import annotations

import logging

import pytest
from test_results_common import INVALID_ATTRIBUTES, STUDY_UID, invalid_cr, synthetic_cr

from node.results.source_attrs import sanitized

# Type 2 in their modules (must be present, may be empty) vs Type 3 (may be absent).
TYPE_2 = ("StudyDate", "PatientSex", "AccessionNumber", "PatientName", "StudyID", "ReferringPhysicianName",
          "StudyTime", "PatientBirthDate", "Laterality", "PatientOrientation")
TYPE_3 = ("PixelSpacing", "BodyPartExamined")


def test_every_invalid_attribute_is_classified() -> None:
    assert set(TYPE_2) | set(TYPE_3) == set(INVALID_ATTRIBUTES)


@pytest.mark.parametrize("keyword", TYPE_2)
def test_invalid_type_2_is_emptied(keyword: str) -> None:
    source = invalid_cr(f"{STUDY_UID}.1.1")
    clean = sanitized(source)
    assert keyword in clean and clean[keyword].value in (None, "", [])
    assert source[keyword].value == INVALID_ATTRIBUTES[keyword]  # the source itself is not changed


@pytest.mark.parametrize("keyword", TYPE_3)
def test_invalid_type_3_is_left_out(keyword: str) -> None:
    assert keyword not in sanitized(invalid_cr(f"{STUDY_UID}.1.1"))


@pytest.mark.parametrize("value", ["20200101x", "2020-13-45", "20201301", "2020010"])
def test_malformed_dates_are_all_caught(value: str) -> None:
    assert sanitized(invalid_cr(f"{STUDY_UID}.1.1", StudyDate=value)).StudyDate in (None, "")


def test_valid_values_and_uids_are_kept() -> None:
    source = synthetic_cr(f"{STUDY_UID}.1.1")
    clean = sanitized(source)
    for keyword in ("PatientName", "PatientID", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
                    "BodyPartExamined", "PatientOrientation", "Manufacturer", "StudyInstanceUID", "SOPInstanceUID",
                    "WindowCenter", "Rows"):
        assert clean[keyword].value == source[keyword].value, keyword
    assert "PixelData" not in clean  # a header: pixels are not copied


def test_type_1_is_never_touched() -> None:
    source = invalid_cr(f"{STUDY_UID}.1.1")
    source.StudyInstanceUID = "1.2.3.not-a-uid"  # invalid, but emptying it would move our object out of the study
    assert sanitized(source).StudyInstanceUID == "1.2.3.not-a-uid"


def test_missing_type_2_patient_and_study_attributes_are_added_empty() -> None:
    source = synthetic_cr(f"{STUDY_UID}.1.1")
    del source.PatientSex, source.StudyID, source.ReferringPhysicianName
    clean = sanitized(source)
    assert all(clean[k].value in (None, "") for k in ("PatientSex", "StudyID", "ReferringPhysicianName"))


def test_idempotent() -> None:
    once = sanitized(invalid_cr(f"{STUDY_UID}.1.1"))
    assert sanitized(once) == once


def test_no_value_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    source = invalid_cr(f"{STUDY_UID}.1.1")
    caplog.set_level(logging.DEBUG, logger="node.results.source_attrs")
    sanitized(source)
    # pydicom's own warnings quote values too; the node's logging edge (node.logs) redacts those, ours need not
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "node.results.source_attrs")
    assert "PatientName" in text  # the keyword is named...
    for value in ("2020-13-45", "Male", "ACC-0042", "DDDD", "RRRR", "25:99", "19641301", "chest"):
        assert value not in text  # ...its value never
