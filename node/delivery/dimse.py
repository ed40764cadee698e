"""The ``dimse`` destination: C-STORE over one association per attempt, through pynetdicom.

Presentation contexts are proposed with fallbacks: each SOP class with Explicit and Implicit VR Little Endian (the
destination picks), and our Comprehensive 3D SR also as Comprehensive SR, which is what it is whenever it holds no
3D coordinates (many archives predate 3D SR). A SOP class the destination accepts in no form fails that file only,
permanently, with the fix in its detail: the other files of the attempt are still sent.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
)

from node.config import DestinationSettings
from node.delivery import DeliveryError, SendOutcome

# C-STORE statuses that mean "stored": success and the PS3.4 B.2.3 warnings (coercion, elements discarded).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
# SOP class -> the classes it may be sent as instead, when the dataset allows (see ``_fallback``)
FALLBACKS: dict[str, tuple[str, ...]] = {Comprehensive3DSRStorage: (ComprehensiveSRStorage,)}


def _has_3d_coordinates(ds: Dataset) -> bool:
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "SCOORD3D" or _has_3d_coordinates(item):
            return True
    return False


def _as_class(ds: Dataset, sop_class: str) -> Dataset | None:
    """``ds`` as an instance of ``sop_class``, or None when it cannot be one (an SR with SCOORD3D stays 3D)."""
    if sop_class == ComprehensiveSRStorage and _has_3d_coordinates(ds):
        return None
    copy = Dataset(ds)  # shallow: only the two class attributes differ
    copy.file_meta = FileMetaDataset(ds.file_meta)
    copy.SOPClassUID = UID(sop_class)
    copy.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    return copy


def _accepted(assoc: Association) -> set[str]:
    return {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}


class DimseDestination:
    def __init__(self, settings: DestinationSettings, calling_ae: str, timeout: float = 60.0) -> None:
        self.settings = settings
        self.calling_ae = calling_ae
        self.timeout = timeout

    def _ae(self, timeout: float) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        return ae

    def _not_accepted(self, sop_class: str) -> str:
        name = UID(sop_class).name
        return (f"destination {self.settings.name!r} accepts no presentation context for {name} ({sop_class}): "
                f"configure it to accept that SOP class, or leave this kind of object out of its kinds")

    def send(self, paths: list[Path], budget_seconds: float) -> list[SendOutcome]:
        """C-STORE each file over one association; per-file outcomes (an association failure raises DeliveryError).

        ``budget_seconds`` bounds the whole attempt: when it is spent the association is aborted, and every file not
        yet stored has the outcome "past its budget" (a failed attempt for the outbox, which backs off).
        """
        started = time.monotonic()
        datasets = {path: dcmread(path) for path in paths}  # read once: the SOP class picks the context, then sent
        ae = self._ae(min(self.timeout, budget_seconds))
        classes = sorted({str(ds.SOPClassUID) for ds in datasets.values()})
        for sop_class in sorted({c for cls in classes for c in (cls, *FALLBACKS.get(cls, ()))}):
            ae.add_requested_context(sop_class, UNCOMPRESSED)
        s = self.settings
        assoc = ae.associate(s.host, s.port, ae_title=s.ae_title)
        if not assoc.is_established:
            rejected = {str(cx.abstract_syntax) for cx in assoc.rejected_contexts}
            if rejected and not _accepted(assoc):  # associated, but nothing we offered was taken: permanent
                return [SendOutcome(p, False, self._not_accepted(str(datasets[p].SOPClassUID)), permanent=True)
                        for p in paths]
            raise DeliveryError(f"C-STORE: no association with {s.describe()}")
        accepted = _accepted(assoc)
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
                ds = datasets[path]
                if spent.is_set():
                    outcomes.append(SendOutcome(path, False, over))
                    continue
                if not assoc.is_established:
                    outcomes.append(SendOutcome(path, False, "association lost"))
                    continue
                sendable = self._sendable(ds, accepted)
                if sendable is None:
                    outcomes.append(SendOutcome(path, False, self._not_accepted(str(ds.SOPClassUID)), permanent=True))
                    continue
                status = assoc.send_c_store(sendable)
                if status is None or "Status" not in status:
                    outcomes.append(SendOutcome(path, False, over if spent.is_set() else "no response from the PACS"))
                    continue
                code = int(status.Status)
                outcomes.append(SendOutcome(path, code in STORED, f"status 0x{code:04X}"))
        finally:
            if assoc.is_established:
                assoc.release()
            timer.cancel()  # after the release: a PACS slow to release is inside the budget too
        return outcomes

    @staticmethod
    def _sendable(ds: Dataset, accepted: set[str]) -> Dataset | None:
        sop_class = str(ds.SOPClassUID)
        if sop_class in accepted:
            return ds
        for other in FALLBACKS.get(sop_class, ()):
            if other in accepted and (converted := _as_class(ds, other)) is not None:
                return converted
        return None
