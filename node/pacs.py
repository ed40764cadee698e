"""The node as a query SCU towards the PACS: C-FIND for a study's instance count (sending results is
``node.delivery``).

Every association goes through pynetdicom; callers get plain values or a ``PacsError`` that says what failed.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from node.config import PacsSettings

log = logging.getLogger(__name__)


class PacsError(RuntimeError):
    """The PACS could not be reached or refused the request."""


def _ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def study_instance_count(
    pacs: PacsSettings, calling_ae: str, study_uid: str, exclude_series: set[str] | None = None, timeout: float = 10.0
) -> int | None:
    """Instances the PACS holds for the study outside ``exclude_series`` (the node's own result series).

    Asked per series (NumberOfSeriesRelatedInstances), because the study-level count includes the node's own SR
    and SC once they are delivered. None when the PACS does not know the study.
    """
    exclude = exclude_series or set()
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise PacsError(f"C-FIND: no association with {pacs.ae_title}@{pacs.host}:{pacs.port}")
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.NumberOfSeriesRelatedInstances = None
    counts: dict[str, int] = {}
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if status is None:
                raise PacsError("C-FIND: the PACS did not answer in time")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                series = str(identifier.get("SeriesInstanceUID", "") or "")
                value = identifier.get("NumberOfSeriesRelatedInstances")
                if series and value not in (None, ""):
                    counts[series] = int(value)
            elif code != 0x0000:
                raise PacsError(f"C-FIND failed with status 0x{code:04X}")
    finally:
        assoc.release()
    if not counts:
        return None
    return sum(n for series, n in counts.items() if series not in exclude)
