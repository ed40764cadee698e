"""A copy of a source image's header that our objects can inherit from without inheriting its errors.

Every object we write copies the patient, study and (for overlays) series/equipment attributes of a source image;
a modality that sends ``StudyDate`` "2020-13-45" or ``PatientSex`` "Male" must not make our SR, SC, GSPS or rejection
note invalid. Each value is checked with pydicom's own VR validators and the data dictionary's VM; an invalid Type 2
attribute is emptied (it must be present), an invalid Type 3 one is left out, and Type 1 attributes (the UIDs that
tie our object to the study) are never touched. Values are never logged: they are patient data.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from typing import Any

from highdicom._standard_utils import get_module_attribute_map
from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.valuerep import validate_value

log = logging.getLogger(__name__)

# Modules whose root attributes highdicom copies into our objects (Patient and Study IEs: every IOD we write) or that
# our builders read from a source (series laterality and body part, image orientation, equipment, acquisition time
# for the acquisition item of the Contributing Equipment Sequence). Module keys and attribute Types come from
# highdicom's machine-readable copy of PS3.3, the same table its ``copy_patient_and_study_information`` walks.
_MODULES = (
    "patient", "clinical-trial-subject", "general-study", "patient-study", "clinical-trial-study",
    "general-series", "general-equipment", "general-acquisition", "general-image",
)
# Mandatory in every composite IOD: their Type 2 attributes are added (empty) when a source lacks them, because
# highdicom's SCImage and GSPS constructors read them as plain attributes.
_ALWAYS_PRESENT = ("patient", "general-study")
# Read by the SC builder as an optional parameter; Type 1 in the Image Plane module, but we only ever copy it.
_EXTRA_TYPES = {"PixelSpacing": "3"}
# Enumerated values (PS3.3 C.7.1.1, C.7.3.1) that a VR check cannot see: "B" is a valid CS but no Laterality.
_ENUMERATED = {"PatientSex": frozenset({"M", "F", "O"}), "Laterality": frozenset({"R", "L"})}
# Binary VRs hold numbers, not text a modality can get wrong; sequences are not copied by these checks.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})
_STRICTNESS = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


@lru_cache(1)
def _types() -> dict[str, str]:
    """Keyword -> Type in the modules above (the strictest where a keyword appears in several)."""
    module_map = get_module_attribute_map()
    types: dict[str, str] = dict(_EXTRA_TYPES)
    for module in _MODULES:
        for item in module_map[module]:
            if item["path"]:
                continue
            keyword, kind = str(item["keyword"]), str(item["type"])
            if keyword not in types or _STRICTNESS[kind] < _STRICTNESS[types[keyword]]:
                types[keyword] = kind
    return types


@lru_cache(1)
def _always_present() -> tuple[str, ...]:
    module_map = get_module_attribute_map()
    return tuple(
        str(item["keyword"]) for module in _ALWAYS_PRESENT for item in module_map[module]
        if not item["path"] and item["type"] == "2"
    )


def _vm_allows(vm: str, count: int) -> bool:
    """Whether ``count`` values fit the data dictionary's VM ("1", "2", "1-n", "2-2n", "1-3", ...)."""
    match = re.fullmatch(r"(\d+)(?:-(\d*)(n?))?", vm)
    if match is None:
        return True  # a VM this parser does not know: leave the judgement to the VR check
    low, high, open_ended = int(match.group(1)), match.group(2), bool(match.group(3))
    if high is None:
        return count == low
    if open_ended:  # "1-n", or "2-2n": at least ``low``, in steps of the multiplier
        step = int(high) if high else 1
        return count >= low and (count - low) % step == 0
    return low <= count <= int(high)


def _text(value: Any) -> str:
    # Validators take the value as it is encoded: DSfloat/IS keep their original string, PersonName its components.
    original = getattr(value, "original_string", None)
    return str(original) if original is not None else str(value)


def is_valid(element: DataElement) -> bool:
    """Whether an element's value passes the VR validators, the dictionary VM and the enumerated values we know."""
    if element.VR not in _TEXT_VRS or element.value is None or element.value == "":
        return True
    values = list(element.value) if element.VM > 1 else [element.value]
    if not _vm_allows(dictionary_VM(element.tag), len(values)):
        return False
    allowed = _ENUMERATED.get(element.keyword)
    for value in values:
        if allowed is not None and str(value) not in allowed:
            return False
        try:
            validate_value(element.VR, _text(value), pydicom_config.RAISE)
        except (ValueError, TypeError):  # the message quotes the value: it is dropped, never logged
            return False
    return True


def sanitized(source: Dataset) -> Dataset:
    """The source's header (no pixel data) with the invalid attributes of the modules above emptied or left out.

    The source is not modified. Applying it twice changes nothing.
    """
    types = _types()
    clean = Dataset()
    emptied: list[str] = []
    dropped: list[str] = []
    for element in source:
        if element.tag.group == 0x7FE0:  # pixel data: not needed to copy a header, and large
            continue
        kind = types.get(element.keyword)
        if kind is None or kind in ("1", "1C") or is_valid(element):
            clean.add(element)
        elif kind in ("2", "2C"):
            clean.add(DataElement(element.tag, element.VR, None))
            emptied.append(element.keyword)
        else:
            dropped.append(element.keyword)
    for keyword in _always_present():
        if keyword not in clean:
            clean.add_new(keyword, _dictionary_vr(keyword), None)
    if "file_meta" in source.__dict__:
        clean.file_meta = source.file_meta
    if emptied or dropped:
        log.debug("source attributes not copied as received: emptied %s; left out %s",
                  ", ".join(emptied) or "none", ", ".join(dropped) or "none")
    return clean


def _dictionary_vr(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return str(dictionary_VR(tag))
