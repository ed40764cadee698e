"""The codes our objects use: standard where a standard code says it, and the pipelines' tokens round-trip."""

from __future__ import annotations


import pytest
from pydicom.sr.codedict import codes

from node.results import coding
from pipelines.common.bundle_layout import CARD, read_config
from pipelines.radiograph_lesion.spec import BUNDLES_DIR, RADIOGRAPH_LESION, RADIOGRAPH_LESION_CLASSES, RADIOGRAPH_LESION_REQUIREMENTS


def test_shipped_classes_are_snomed_and_the_bundle_says_the_same() -> None:
    # A reader of the SR sees SNOMED CT morphologies, never a code only this project can resolve.
    assert [(c.value, c.scheme_designator) for c in RADIOGRAPH_LESION_CLASSES] == [
        ("3898006", "SCT"), ("86251006", "SCT"), ("86049000", "SCT")]
    assert RADIOGRAPH_LESION_CLASSES[1].meaning == "Neoplasm, uncertain whether benign or malignant"
    config = read_config(BUNDLES_DIR / RADIOGRAPH_LESION)
    assert [(c["value"], c["scheme_designator"], c["meaning"]) for c in config["classes"]] == [
        (c.value, c.scheme_designator, c.meaning) for c in RADIOGRAPH_LESION_CLASSES]
    assert "99AINODE" not in (BUNDLES_DIR / RADIOGRAPH_LESION / CARD).read_text()


def test_pipeline_anatomy_is_a_common_anatomic_region() -> None:
    anatomy = RADIOGRAPH_LESION_REQUIREMENTS.anatomy
    assert anatomy is not None
    assert (anatomy.value, anatomy.scheme_designator, anatomy.meaning) == (
        codes.SCT.Extremity.value, "SCT", codes.SCT.Extremity.meaning)
    assert "Extremity" in codes.cid4031.dir()


@pytest.mark.parametrize("token", ["image", "labs", "labs:2532-0", "notes"])
def test_input_tokens_round_trip(token: str) -> None:
    assert coding.input_token(coding.input_code(token)) == token


def test_notes_are_the_generic_loinc_note_not_a_lab() -> None:
    assert (coding.NOTES.value, coding.NOTES.scheme_designator) == ("34109-9", "LN")
    assert coding.input_token(coding.NOTES) == "notes"


def test_processing_algorithm_is_the_ihe_air_code_declared_with_its_scheme() -> None:
    code = coding.PROCESSING_ALGORITHM
    assert (code.value, code.scheme_designator, code.meaning) == ("Newcode1", "99IHE", "Processing Algorithm")
    assert coding.IHE_SCHEME_ITEM.CodingSchemeDesignator == "99IHE"
    # No standard purpose of reference says "algorithm" (CID 7005): the IHE code is the one to use.
    assert not any("Algorithm" in name for name in codes.cid7005.dir())


@pytest.mark.parametrize("reason", ["undecodable", "unreadable", "outside-intended-use", "out-of-distribution"])
def test_every_exclusion_reason_a_pipeline_reports_has_its_own_code(reason: str) -> None:
    code = coding.exclusion_reason_code(reason)
    assert coding.exclusion_reason_token(code) == reason
    assert code.scheme_designator == coding.PRIVATE_SCHEME  # no standard concept says it (see coding.py)
    values = [c.value for c in coding.EXCLUSION_REASON_CODES.values()]
    assert len(values) == len(set(values))
