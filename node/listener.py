"""The DICOM listener: a pynetdicom AE answering C-ECHO and C-STORE for every storage SOP class.

The C-STORE handler is thin: check that the dataset can be understood, recognise a re-send (same SOP Instance UID:
same content is acknowledged and nothing changes; different content follows ``[ingest] resent_conflict``) and the
node's own results coming back (``[ingest] own_results``), write the received bytes durably to the spool, index
the row, and only then return success. It never decodes pixels, calls FHIR or runs a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.config import IngestSettings, NodeSettings, RouteRule, SecuritySettings
from node.dicom_server import ConnectionBook, ConnectionLimits, Listeners, serve


from node.config import IngestSettings, NodeSettings, RouteRule
from node.pixels import UnusablePixels, check_pixels
from node.resources import low_space
from node.router import pipelines_for
from node.store import IndexedInstance, IndexOutcome, Store
from node.tls import dicom_context

log = logging.getLogger("node.listener")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # persisting failed: the sender keeps the instance and retries
STATUS_CANNOT_UNDERSTAND = 0xC000  # the dataset is unusable: unparseable, truncated or lacking its UIDs
STATUS_DATASET_MISMATCH = 0xA900  # the dataset's SOP class is not the one of the presentation context

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


# What the node reads from a received instance (index, routing, pixel checks, pipelines' image loading): one of
# these unreadable refuses the instance; any other malformed element is tolerated.
ELEMENTS_READ = frozenset({
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "BodyPartExamined",
    "SeriesDescription", "PatientID", "PatientAge", "PatientSex", "StudyDate", "Manufacturer", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
    "NumberOfFrames", "PixelData", "RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImagerPixelSpacing",
    "WindowCenter", "WindowWidth", "VOILUTFunction",
})


class UnusableDataset(ValueError):
    """The received dataset cannot be stored as a DICOM instance; the message says why (no identifiers)."""


def uid_digest(uid: str) -> str:
    """A short stable hash of a UID, for logs at INFO (studies are never named by their UID there)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value or len(value) > 64 or not _UID_RE.match(value):
        raise UnusableDataset(f"{keyword} is missing or not a valid UID")
    return value


def check_dataset(ds: Dataset, transfer_syntax: UID, pixels: str = "header") -> None:
    """Force every top-level element to be read and check what the node relies on.

    pydicom parses lazily, so a truncated stream or garbage would otherwise only fail later in the worker,
    after the sender was told the instance is safe. ``pixels`` is the ``[ingest] check_pixels`` policy.
    """
    try:
        tags = list(ds.keys())  # the stream's structure (tags, lengths) was parsed when the dataset was decoded
    except Exception as exc:  # pydicom raises many types for malformed data
        raise UnusableDataset(f"dataset cannot be parsed: {type(exc).__name__}") from exc
    # Lenient like a PACS: a malformed value the node never reads (an odd-length binary value, a bad private
    # sequence) does not refuse the instance; the stored bytes stay exactly as received.
    tolerated = 0
    for tag in tags:
        try:
            ds[tag]  # converts the raw element
        except Exception as exc:
            keyword = keyword_for_tag(tag)
            if keyword in ELEMENTS_READ or tag.group in (0x0002, 0x7FE0):
                raise UnusableDataset(f"{keyword or 'an element'} cannot be read: {type(exc).__name__}") from exc
            tolerated += 1
    if tolerated:
        log.debug("%d malformed element(s) the node does not read were tolerated", tolerated)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        _uid(ds, keyword)
    try:
        check_pixels(ds, transfer_syntax, pixels)
    except UnusablePixels as exc:
        raise UnusableDataset(str(exc)) from exc


class Spool:
    """Received instances as files: data_dir/spool/<study hash>/<SOP Instance UID>.dcm."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, sop_instance_uid: str, digest: str = "") -> Path:
        # The content digest is in the name: a re-send with other content never overwrites the indexed file.
        suffix = f".{digest[:16]}" if digest else ""
        return self.root / uid_digest(study_uid) / f"{sop_instance_uid}{suffix}.dcm"

    def write(self, study_uid: str, sop_instance_uid: str, data: bytes, digest: str = "") -> Path:
        """Temp file, fsync, atomic rename, fsync of the directory: after this returns the bytes survive a crash.

        When any step fails (a full disk, most often) nothing of this write is left: the sender still has the
        instance, and a half-written file would hold the very space a re-send needs.
        """
        final = self.path_for(study_uid, sop_instance_uid, digest)
        folder = final.parent
        new_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{sop_instance_uid}.{threading.get_ident()}.tmp"
        renamed = False
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            renamed = True
            _fsync_dir(folder)
            if new_folder:
                _fsync_dir(self.root)
        except BaseException:
            tmp.unlink(missing_ok=True)
            if renamed:  # not yet indexed, and its durability unknown: the sender will send it again
                final.unlink(missing_ok=True)
            raise
        return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ListenerDeps:
    """What the C-STORE handler needs, bound to the event (no globals)."""

    spool: Spool
    open_store: Callable[[], Store]
    on_stored: Callable[[str], None] | None = None  # study UID of each newly stored instance
    routes: tuple[RouteRule, ...] = ()  # which pipelines read an instance decides whether a late one re-opens
    ingest: IngestSettings = IngestSettings()
    own_manufacturer: str = "dicom-ai-node"  # results of another install of the node are recognised by it too
    # instances stored per open association (keyed by id of the association), for its audit record
    stored_per_association: dict[int, int] = field(default_factory=dict)


def _patient_age(ds: Dataset) -> float | None:
    age = str(ds.get("PatientAge", "") or "")
    match = re.match(r"^(\d{3})([DWMY])$", age)
    if not match:
        return None
    per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match.group(2)]
    return int(match.group(1)) / per_year


_thread_stores = threading.local()


def _store_for_thread(deps: ListenerDeps) -> Store:
    # One connection per association thread: sqlite3 connections must not be shared between threads.
    store = getattr(_thread_stores, "store", None)
    if store is None:
        store = deps.open_store()
        _thread_stores.store = store
    return store


def handle_store(event: evt.Event, deps: ListenerDeps) -> int:
    """EVT_C_STORE: persist durably, index, return the DIMSE status."""
    calling_ae = event.assoc.requestor.ae_title
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        transfer_syntax = event.context.transfer_syntax
        check_dataset(ds, UID(transfer_syntax), deps.ingest.check_pixels)
        if str(ds.SOPClassUID) != str(event.request.AffectedSOPClassUID):
            log.warning("store refused: SOP Class UID differs from the request's (caller %s)", calling_ae)
            return STATUS_DATASET_MISMATCH
    except UnusableDataset as exc:
        log.warning("store refused from %s: %s", calling_ae, exc)
        return STATUS_CANNOT_UNDERSTAND
    except Exception as exc:  # anything pydicom raises while decoding: the dataset is not usable
        log.warning("store refused from %s: cannot decode dataset (%s)", calling_ae, type(exc).__name__)
        return STATUS_CANNOT_UNDERSTAND

    study_uid = str(ds.StudyInstanceUID)
    sop_uid = str(ds.SOPInstanceUID)
    series_uid = str(ds.SeriesInstanceUID)
    try:
        store = _store_for_thread(deps)
        stream = event.encoded_dataset(include_meta=False)
        digest = hashlib.sha256(stream).hexdigest()
        own = store.is_own_result(sop_uid, series_uid) or ds.get("Manufacturer") == deps.own_manufacturer
        known = store.known_instance(sop_uid)
        if own and deps.ingest.own_results == "ignore":
            # Ours, and durably kept in data_dir/results already: acknowledged, never counted, never routed.
            log.debug("own result of study %s came back: ignored", uid_digest(study_uid))
            return STATUS_SUCCESS
        replace = known is not None and known.digest != digest and deps.ingest.resent_conflict == "replace"
        if known is not None and not replace:
            outcome = store.index_instance(_indexed(ds, event, calling_ae, known.path, 0, digest, own, deps))
            log.info("instance of study %s re-sent: %s", uid_digest(study_uid), outcome)
            return STATUS_SUCCESS
        data = b"".join((b"\x00" * 128, b"DICM", encode_file_meta(event.file_meta), stream))
        short = low_space(deps.spool.root, deps.ingest, len(data))
        if short is not None:
            log.warning("store refused from %s (study %s): %s", calling_ae, uid_digest(study_uid), short)
            return STATUS_OUT_OF_RESOURCES
        path = deps.spool.write(study_uid, sop_uid, data, digest)
        row = _indexed(ds, event, calling_ae, str(path), len(data), digest, own, deps)
        try:
            if replace:
                old = store.replace_instance(row)
                outcome = IndexOutcome.REPLACED
            else:
                outcome = store.index_instance(row)
        except BaseException:
            _drop_unindexed(store, sop_uid, path)
            raise
        if replace and old and old != str(path):
            Path(old).unlink(missing_ok=True)
    except Exception as exc:  # disk full, permissions, database locked: the sender must keep the instance
        log.error("store failed to persist (study %s): %s: %s", uid_digest(study_uid), type(exc).__name__, exc)
        return STATUS_OUT_OF_RESOURCES
    counts = deps.stored_per_association
    counts[id(event.assoc)] = counts.get(id(event.assoc), 0) + 1
    log.debug("stored instance of study %s (%s)", uid_digest(study_uid), outcome)
    if outcome in (IndexOutcome.NEW, IndexOutcome.REPLACED) and deps.on_stored is not None:
        deps.on_stored(study_uid)
    return STATUS_SUCCESS


def _drop_unindexed(store: Store, sop_uid: str, path: Path) -> None:
    """Indexing failed: remove the file just written, unless a row names it after all (the same instance, stored
    by a concurrent association). An unindexed file would only hold space until the re-send writes it again."""
    try:
        known = store.known_instance(sop_uid)
    except Exception:
        return  # cannot tell: keeping an orphan file is better than losing an indexed instance's bytes
    if known is None or known.path != str(path):
        path.unlink(missing_ok=True)


def _indexed(ds: Dataset, event: evt.Event, calling_ae: str, path: str, size: int, digest: str, own: bool,
             deps: ListenerDeps) -> IndexedInstance:
    row = {
        "modality": str(ds.get("Modality", "") or ""), "body_part": str(ds.get("BodyPartExamined", "") or ""),
        "series_description": str(ds.get("SeriesDescription", "") or ""), "sop_class_uid": str(ds.SOPClassUID),
    }
    return IndexedInstance(
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(event.context.transfer_syntax),
        path=path,
        size=size,
        calling_ae=calling_ae,
        patient_id=str(ds.get("PatientID", "") or ""),
        patient_age=_patient_age(ds),
        patient_sex=str(ds.get("PatientSex", "") or ""),
        study_date=str(ds.get("StudyDate", "") or ""),
        digest=digest,
        own_result=own,
        routed_to=() if own else tuple(pipelines_for([row], deps.routes)),
        **row,
    )


def handle_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def handle_association_end(event: evt.Event, deps: ListenerDeps, outcome: str) -> None:
    """EVT_RELEASED / EVT_ABORTED / EVT_REJECTED: one audit record per association (who, from where, outcome,
    instances stored). An audit failure is logged, never raised into pynetdicom."""
    from node.audit import ASSOCIATION

    requestor = event.assoc.requestor
    stored = deps.stored_per_association.pop(id(event.assoc), 0)
    try:
        _store_for_thread(deps).audit(
            ASSOCIATION, outcome, actor=str(requestor.ae_title), source=f"{requestor.address}:{requestor.port}",
            detail={"called_ae": str(event.assoc.acceptor.ae_title), "instances_stored": stored},
        )
    except Exception as exc:
        log.error("audit record of an association could not be written: %s", type(exc).__name__)


def build_ae(settings: NodeSettings, security: SecuritySettings = SecuritySettings()) -> AE:
    ae = AE(ae_title=settings.ae_title)
    # Accept every storage SOP class in every transfer syntax pydicom knows; decoding happens in the worker.
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    # pynetdicom counts connections still negotiating against this limit, so idle sockets locked everyone out;
    # node.dicom_server limits established associations (and negotiating connections) itself instead.
    ae.maximum_associations = 100_000
    ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
    ae.network_timeout = security.idle_timeout_seconds
    ae.dimse_timeout = 60
    ae.acse_timeout = security.associate_timeout_seconds  # ARTIM: also how long a release may take
    return ae


def start_listener(settings: NodeSettings, deps: ListenerDeps,
                   security: SecuritySettings = SecuritySettings()) -> Listeners:
    """Start the SCP in background threads: on ``settings.port``, plain or TLS as ``[security.tls]`` says, plus a
    TLS port beside the plain one when TLS is not required. ``shutdown()`` on the result stops them."""
    ae = build_ae(settings, security)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [deps]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_RELEASED, handle_association_end, [deps, "released"]),
        (evt.EVT_ABORTED, handle_association_end, [deps, "aborted"]),
        (evt.EVT_REJECTED, handle_association_end, [deps, "rejected"]),
    ]
    book = ConnectionBook(ConnectionLimits.of(security))
    tls = security.tls
    context = dicom_context(tls) if tls is not None else None
    servers = [serve(ae, (settings.host, settings.port), security, handlers, book,
                     context if tls is not None and tls.required else None)]
    if tls is not None and not tls.required:
        assert tls.port is not None
        servers.append(serve(ae, (settings.host, tls.port), security, handlers, book, context))
    for server in servers:
        log.info("listening for DICOM as %s on %s:%d (%s)", settings.ae_title, settings.host,
                 server.server_address[1], "TLS" if server.ssl_context is not None else "plain")
    return Listeners(tuple(servers), book)
