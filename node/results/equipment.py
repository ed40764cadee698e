"""The algorithm as Contributing Equipment, the way IHE AI Results asks every result object to name it.

One item per object: Purpose of Reference "Processing Algorithm", Manufacturer, Manufacturer's Model Name (pipeline
and version), Software Versions and the Device UID of that algorithm version. highdicom adds its own item (the
library) next to it, and, for objects built from an image, the source's acquisition equipment.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from node.results import coding
from node.results.uids import device_uid


def algorithm_equipment(
    pipeline: str, version: str, manufacturer: str, institution_name: str | None = None
) -> hd.ContributingEquipment:
    """The Contributing Equipment Sequence item of one pipeline version (the same Device UID as the SR's observer)."""
    item = hd.ContributingEquipment(
        manufacturer=manufacturer,
        # highdicom accepts only CID 7005 purposes here; built with the nearest one, then given the IHE code below.
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=f"{pipeline} {version}"[:64],
        software_versions=version,
        institution_name=institution_name,
        contribution_description=f"AI algorithm {pipeline} {version} that produced the results"[:1024],
    )
    # IHE AIR's purpose (no DICOM code exists yet, see coding.PROCESSING_ALGORITHM) and its Device UID, for which
    # highdicom's ContributingEquipment has no parameter.
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(coding.PROCESSING_ALGORITHM)]
    item.DeviceUID = device_uid(pipeline, version)
    return item
