"""Where a finding is: the TID 1410 Finding Site from the source image's Body Part Examined, else the pipeline's region.

Body Part Examined is mapped with PS3.16 Annex L (Table L-1, the Defined Terms and their SNOMED CT codes, e.g.
"CHEST" -> 816094009 "Chest", "FEMUR" -> 71341001 "Femur"), in highdicom's machine-readable copy of it. Laterality
(R or L from the image) is added for paired structures only, as CID 244 "Laterality" codes.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
from highdicom._standard_utils import get_anatomic_region_map
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pipelines.base import CodedClass

_LATERALITY = {"R": codes.SCT.Right, "L": codes.SCT.Left}  # CID 244


def side_of(laterality: hd.sr.CodedConcept | Code | None) -> str:
    """"R", "L" or "" for a finding site's laterality code (the inverse of the mapping used to write it)."""
    if laterality is None:
        return ""
    for side, code in _LATERALITY.items():
        if laterality.value == code.value and laterality.scheme_designator == code.scheme_designator:
            return side
    return ""


def body_part_code(body_part: str) -> tuple[hd.sr.CodedConcept, bool] | None:
    """The Annex L code of a Body Part Examined value and whether it is paired; None when it has none.

    Matched upper-cased and stripped: lower-case values are common from modalities, and not copying an invalid value
    into our objects does not mean ignoring what it says.
    """
    return get_anatomic_region_map().get(body_part.strip().upper())


def finding_site(source: Dataset, fallback: CodedClass | None) -> hd.sr.FindingSite | None:
    """The finding site of a finding on ``source``; ``fallback`` (the pipeline's anatomy) when the image says nothing
    the standard can code. None when neither is known."""
    mapped = body_part_code(str(source.get("BodyPartExamined") or ""))
    if mapped is not None:
        region, paired = mapped
        side = str(source.get("ImageLaterality") or source.get("Laterality") or "").strip().upper()
        return hd.sr.FindingSite(anatomic_location=region, laterality=_LATERALITY.get(side) if paired else None)
    if fallback is not None:
        return hd.sr.FindingSite(anatomic_location=Code(fallback.value, fallback.scheme_designator, fallback.meaning))
    return None


def series_anatomy(target: Dataset, headers: Sequence[Dataset]) -> None:
    """Body Part Examined and Laterality (General Series) of an object made from ``headers`` (sanitized sources).

    The body part when the sources share one (highdicom has no parameter for it). Laterality is Type 2C: absent for
    an unpaired part, the shared R or L otherwise, and empty, i.e. unknown, when the part is paired or not known but
    the sources do not agree on a side (or state none).
    """
    parts = {str(h.get("BodyPartExamined") or "") for h in headers}
    sides = {str(h.get("Laterality") or "") for h in headers}
    part = parts.pop() if len(parts) == 1 else ""
    side = sides.pop() if len(sides) == 1 else ""
    if part:
        target.BodyPartExamined = part
    mapped = body_part_code(part) if part else None
    if mapped is not None and not mapped[1]:
        if "Laterality" in target:
            del target.Laterality
        return
    if side in _LATERALITY:
        target.Laterality = side
    else:
        target.add_new("Laterality", "CS", None)
