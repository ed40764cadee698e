"""The IOCM rejection note that marks results an amendment superseded: a Key Object Selection Document titled
"Rejected for Quality Reasons" (CID 7011) listing the superseded SR, SC overlays and presentation states.

An Image Manager that implements IHE IOCM (dcm4chee, most enterprise PACS) hides the listed objects from viewers;
one that does not (Orthanc) keeps them, and the note in the study says which overlays are no longer current.
Built with highdicom; UIDs come from the caller; no I/O.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from node.results import coding
from node.results.equipment import algorithm_equipment
from node.results.source_attrs import sanitized
from node.results.sr import device_observer

# IOCM (IHE RAD TF-1 Ch. 36): the rejection-note title an Image Manager acts on for objects that must not be shown.
REJECTION_TITLE = codes.DCM.RejectedForQualityReasons  # (113001, DCM, "Rejected for Quality Reasons")


def build_rejection_note(
    superseded: Sequence[Dataset],
    *,
    amended_by: str,
    pipeline: str,
    version: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    manufacturer: str,
) -> hd.ko.KeyObjectSelectionDocument:
    """A KOS listing ``superseded`` (datasets of our earlier SR, SCs and GSPS; pixels not needed)."""
    if not superseded:
        raise ValueError("a rejection note needs at least one superseded object")
    observer = device_observer(pipeline, version, manufacturer)
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTION_TITLE,
        referenced_objects=list(superseded),
        observer_device_context=observer,
        description=f"AI results superseded by amended SR {amended_by}"[:1024],
    )
    return hd.ko.KeyObjectSelectionDocument(
        # patient and study come from the first: objects an older version wrote may carry a source's invalid values
        evidence=[sanitized(ds) for ds in superseded],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        series_description=f"AI {pipeline} superseded results (rejection note)"[:64],
        contributing_equipment=[algorithm_equipment(pipeline, version, manufacturer)],
        coding_schemes=[coding.IHE_SCHEME_ITEM],
    )
