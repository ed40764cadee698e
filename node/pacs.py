"""The node as an SCU towards the PACS: C-FIND for a study's instance count, C-STORE of result objects.

Every association goes through pynetdicom; callers get plain values or a ``PacsError`` that says what failed.
A delivery attempt has one wall-clock budget: DIMSE timeouts are per message, so a PACS answering slowly to every
C-STORE would otherwise hold the outbox for as long as it likes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from node.config import PacsSettings

log = logging.getLogger(__name__)

# C-STORE statuses that mean "stored": success and the PS3.4 B.2.3 warnings (coercion, elements discarded).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class PacsError(RuntimeError):
    """The PACS could not be reached or refused the request."""


@dataclass(frozen=True)
class SendOutcome:
    path: Path
    ok: bool
    detail: str


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


def store_files(pacs: PacsSettings, calling_ae: str, paths: list[Path], budget_seconds: float = 120.0,
                timeout: float = 60.0) -> list[SendOutcome]:
    """C-STORE each file over one association; per-file outcomes (an association failure raises PacsError).

    ``budget_seconds`` bounds the whole attempt: when it is spent the association is aborted, and every file not
    yet stored has the outcome "past its budget" (a failed attempt for the outbox, which backs off).
    """
    started = time.monotonic()
    datasets = {path: dcmread(path) for path in paths}  # read once: the SOP class picks the context, then sent
    ae = _ae(calling_ae, min(timeout, budget_seconds))
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets.values()}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise PacsError(f"C-STORE: no association with {pacs.ae_title}@{pacs.host}:{pacs.port}")
    spent = threading.Event()

    def stop() -> None:
        spent.set()
        assoc.abort()  # unblocks the C-STORE waiting for its response

    timer = threading.Timer(max(0.0, budget_seconds - (time.monotonic() - started)), stop)
    timer.daemon = True
    timer.start()
    over = f"delivery attempt past its budget of {budget_seconds:g} s (budgets.delivery_seconds)"
    outcomes: list[SendOutcome] = []
    try:
        for path in paths:
            if spent.is_set():
                outcomes.append(SendOutcome(path, False, over))
                continue
            if not assoc.is_established:
                outcomes.append(SendOutcome(path, False, "association lost"))
                continue
            status = assoc.send_c_store(datasets[path])
            if status is None or "Status" not in status:
                outcomes.append(SendOutcome(path, False, over if spent.is_set() else "no response from the PACS"))
                continue
            code = int(status.Status)
            outcomes.append(SendOutcome(path, code in _STORED, f"status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
        timer.cancel()  # after the release: a PACS slow to release is inside the budget too
    return outcomes
