"""Intended use: the bundle's declaration, the header check on real and synthetic images, and the default routing that
follows it (a chest CR never reaches the bone model; an absent body part is left to the pipeline's own checks)."""

from __future__ import annotations

import json
from copy import deepcopy
from functools import cache
from pathlib import Path

import pytest
from highdicom._standard_utils import get_anatomic_region_map
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from node.config import RouteRule, intended_use_routes, parse_settings
from node.router import instances_for, pipelines_for, rule_matches
from pipelines.base import IntendedUse
from devtools.synthetic.cohort import generate_case
from devtools.synthetic.cohort_io import case_datasets
from pipelines.common.bundle_layout import read_config
from pipelines.common.intended_use import body_part_allowed, from_config, header_problem, to_config
from pipelines.radiograph_lesion.spec import (
    BUNDLES_DIR, RADIOGRAPH_LESION, RADIOGRAPH_LESION_INTENDED_USE, RADIOGRAPH_LESION_INTENDED_USE_WHY,
)

from node_fakes import settings

USE = RADIOGRAPH_LESION_INTENDED_USE
# Body parts in lower case or padded are invalid CS values, and pydicom says so; modalities send them all the same.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR CS")


def real(name: str) -> Dataset:
    """A file of pydicom-data (a test dependency): a real image, header only."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom-data lacks {name}"
    return dcmread(path, stop_before_pixels=True)


@cache
def _phantom() -> Dataset:
    return case_datasets(generate_case(7, 0))[0]


def phantom() -> Dataset:
    """A training-cohort image: CR, FEMUR/TIBIA/HUMERUS, AP, MONOCHROME2, 512 x 512 at 0.3 mm (a copy)."""
    return deepcopy(_phantom())


def row(ds: Dataset) -> dict[str, str]:
    """The instance as the listener indexes it (the columns routing reads)."""
    return {"modality": str(ds.get("Modality", "") or ""), "body_part": str(ds.get("BodyPartExamined", "") or ""),
            "sop_class_uid": str(ds.SOPClassUID), "series_description": str(ds.get("SeriesDescription", "") or "")}


def test_the_shipped_bundle_declares_what_the_spec_says() -> None:
    config = read_config(BUNDLES_DIR / RADIOGRAPH_LESION)
    assert from_config(config["intended_use"]) == USE
    assert config["intended_use"] == json.loads(json.dumps(to_config(USE, RADIOGRAPH_LESION_INTENDED_USE_WHY)))
    assert set(config["intended_use"]["why"]) == {"modalities", "body_parts", "views", "photometric_interpretations",
                                                  "pixel_spacing_mm", "min_size", "max_size"}
    # the cohort's bones are in, and every intended body part but two common vendor words is an Annex L term
    assert {"FEMUR", "TIBIA", "HUMERUS"} <= set(USE.body_parts)
    assert set(USE.body_parts) - set(get_anatomic_region_map()) == {"LEG", "ARM"}
    assert not {"CHEST", "SKULL", "HEAD", "KNEE", "HAND", "FOOT", "PELVIS", "SPINE"} & set(USE.body_parts)


@pytest.mark.parametrize(("section", "key"), [
    ({"modalities": []}, "modalities"),
    ({"modalities": ["CR"], "pixel_spacing_mm": [0.5, 0.1]}, "pixel_spacing_mm"),
    ({"modalities": ["CR"], "min_size": 512, "max_size": 256}, "min_size"),
    ({"modalities": ["CR"], "body_parts": "FEMUR"}, "body_parts"),
    ({"modalities": ["CR"], "colour": "blue"}, "colour"),
])
def test_a_wrong_declaration_names_its_key(section: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        from_config(section)


def test_training_images_are_inside() -> None:
    for ds in case_datasets(generate_case(0, 3, n_images=2)):
        assert header_problem(ds, USE) is None


@pytest.mark.parametrize(("name", "words"), [
    ("RG1_UNCR.dcm", "Body Part Examined CHEST is not one of FEMUR"),  # a real chest CR
    ("RG1_J2KI.dcm", "Body Part Examined CHEST"),
    ("6154", "Body Part Examined CSPINE"),  # a real cervical spine CR (pydicom's DICOMDIR test files), 16 x 16
    ("CT_small.dcm", "Modality CT is not one of CR, DX"),
    ("MR_small.dcm", "Modality MR is not one of CR, DX"),
    ("JPEG2000.dcm", "Modality NM"),  # a real whole-body bone scan: bone, but not a radiograph
    ("US1_UNCR.dcm", "Modality US"),
])
def test_real_images_that_are_no_limb_radiographs_are_outside(name: str, words: str) -> None:
    assert words in (header_problem(real(name), USE) or "")


def test_a_real_extremity_cr_passes_the_header_check() -> None:
    # RG3: CR, EXTREMITY, AP, MONOCHROME1, 1760 x 1760, no pixel spacing: the pixels must decide (out-of-distribution)
    assert header_problem(real("RG3_UNCR.dcm"), USE) is None


def _changed(**attributes: object) -> Dataset:
    """The phantom with some attributes changed (None: removed)."""
    ds = phantom()
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(("attributes", "words"), [
    ({"Modality": "DX"}, None),
    ({"BodyPartExamined": "femur "}, None),  # lower case and padding, as modalities send it
    ({"BodyPartExamined": None}, None),  # absent: allowed, the pixels decide
    ({"ViewPosition": None}, None),
    ({"PixelSpacing": None, "ImagerPixelSpacing": None}, None),
    ({"PixelSpacing": None, "ImagerPixelSpacing": [0.1, 0.1]}, None),
    ({"BodyPartExamined": "KNEE"}, "Body Part Examined KNEE is not one of"),
    ({"ViewPosition": "RLO"}, "View Position RLO is not one of AP, PA, LAT, LL, RL"),
    ({"PhotometricInterpretation": "RGB"}, "Photometric Interpretation RGB is not one of MONOCHROME1, MONOCHROME2"),
    ({"PixelSpacing": [0.0, 0.0]}, "Pixel Spacing 0 x 0 mm is outside the intended 0.05-0.5 mm"),  # as RG1 says
    ({"PixelSpacing": None, "ImagerPixelSpacing": [2.0, 2.0]}, "Imager Pixel Spacing 2 x 2 mm is outside"),
    ({"Rows": 128}, "image size 512 x 128 pixels is outside the intended 256-4800 per side"),
    ({"Columns": 6000}, "image size 6000 x 512 pixels"),
])
def test_each_attribute_is_checked(attributes: dict[str, object], words: str | None) -> None:
    problem = header_problem(_changed(**attributes), USE)
    assert (problem is None) if words is None else (words in (problem or ""))


def test_problems_never_quote_patient_data() -> None:
    ds = _changed(BodyPartExamined="CHEST")
    problem = header_problem(ds, USE) or ""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID"):
        assert str(ds.get(keyword)) not in problem


def test_default_routes_follow_each_pipelines_intended_use(tmp_path: Path) -> None:
    routes = settings(tmp_path).routes  # no [[route]] in the config: one per shipped bundle
    assert routes == intended_use_routes() and [r.pipeline for r in routes] == ["chest-ct-nodule", RADIOGRAPH_LESION]
    route = routes[1]
    rows = {name: row(real(name)) for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm")}
    rows["phantom"] = row(phantom())
    rows["no body part"] = row(_changed(BodyPartExamined=None))
    rows["lower case"] = row(_changed(BodyPartExamined=" tibia"))
    routed = instances_for(RADIOGRAPH_LESION, rows.values(), (route,))
    assert [name for name, r in rows.items() if r in routed] == ["RG3_UNCR.dcm", "phantom", "no body part",
                                                                "lower case"]
    # a study of only a chest CR, a CT and an MR goes nowhere: "no-pipeline", no SR
    assert pipelines_for([rows["RG1_UNCR.dcm"], rows["CT_small.dcm"], rows["MR_small.dcm"]], (route,)) == []


def test_routing_and_the_pipelines_check_agree_on_every_body_part() -> None:
    route = next(r for r in intended_use_routes() if r.pipeline == RADIOGRAPH_LESION)
    values = [*get_anatomic_region_map(), *USE.body_parts, "", "  ", "leg", " Femur ", "FEMUR2", "LOWER LEG", "X"]
    for value in values:
        ds = _changed(BodyPartExamined=value)
        assert rule_matches(route, row(ds)) == body_part_allowed(USE, value) == (header_problem(ds, USE) is None), value


def test_explicit_routes_replace_the_default_but_not_the_intended_use(tmp_path: Path) -> None:
    # An explicit rule may send a chest CR to the bone model; the pipeline still leaves it out, and says why.
    s = parse_settings({"node": {"data_dir": str(tmp_path)}, "route": [{"pipeline": RADIOGRAPH_LESION,
                                                                       "Modality": "^CR$"}]})
    assert s.routes == (RouteRule(RADIOGRAPH_LESION, {"Modality": "^CR$"}),)
    chest = real("RG1_UNCR.dcm")
    assert instances_for(RADIOGRAPH_LESION, [row(chest)], s.routes) == [row(chest)]
    assert "Body Part Examined CHEST" in (header_problem(chest, USE) or "")


def test_an_intended_use_without_body_parts_or_views_takes_any() -> None:
    any_part = IntendedUse(modalities=("CR",))
    assert header_problem(_changed(BodyPartExamined="CHEST", ViewPosition="RLO"), any_part) is None
