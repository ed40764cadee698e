"""Outbox and destinations: items leave 'pending' only on a stored status; failures back off exponentially, then
dead-letter; an object the destination cannot take at all is dead-lettered at once while the others go; presentation
contexts fall back (Implicit VR, Comprehensive SR); an attempt against a PACS that answers too slowly ends at its
budget and counts as one failed attempt. The DIMSE peers here are pynetdicom SCPs with the contexts under test."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage,
)

from node.config import RESULT_KINDS, DestinationSettings, OutboxSettings
from node.delivery import DeliveryError, SendOutcome
from node.delivery.dimse import DimseDestination
from node.delivery.outbox import Outbox, backoff
from node.store import DeliveryRoute, JobPlan, RunOutcome, Store
from node.localpeers.orthanc import free_port
from node_fakes import TO_PACS, cr_dataset, write_cr
from test_store import inst

SUMMARY = {"timings": {}, "fhir_status": "ok", "n_findings": 1, "inputs_missing": [], "sr_sop_uid": "9.1"}


def destination(name: str = "pacs", port: int = 4242, retry: OutboxSettings = OutboxSettings(),
                kinds: frozenset[str] = frozenset(RESULT_KINDS)) -> DestinationSettings:
    return DestinationSettings(name=name, type="dimse", kinds=kinds, retry=retry, ae_title="PACS",
                               host="127.0.0.1", port=port)


class FakeDestination:
    def __init__(self, settings: DestinationSettings, answer: Callable[[list[Path]], list[SendOutcome]]) -> None:
        self.settings = settings
        self.answer = answer
        self.calls: list[list[Path]] = []

    def send(self, paths: list[Path], budget_seconds: float) -> list[SendOutcome]:
        self.calls.append(paths)
        return self.answer(paths)


def queued(tmp_path: Path, objects: tuple[tuple[str, str, str, str], ...] | None = None,
           routes: list[DeliveryRoute] = TO_PACS, db_name: str = "db") -> Store:
    store = Store(tmp_path / db_name)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    objects = objects or (("9.1", "8.1", "sr", "/r/sr.dcm"), ("9.2", "8.2", "sc", "/r/sc-1.dcm"))
    store.finish_run(job["run_id"], RunOutcome("digest", objects, False, SUMMARY), routes, now=4.0)
    return store


def test_backoff_doubles_and_caps() -> None:
    s = OutboxSettings(max_attempts=8, backoff_seconds=2.0, backoff_max_seconds=10.0)
    assert [backoff(s, n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]


def test_each_destination_gets_the_kinds_it_takes_in_its_own_queue(tmp_path: Path) -> None:
    store = queued(tmp_path, routes=[DeliveryRoute("pacs", frozenset(RESULT_KINDS)),
                                     DeliveryRoute("viewer", frozenset({"sc"}))])
    assert sorted(i["item_id"] for i in store.outbox_items()) == ["pacs/9.1", "pacs/9.2", "viewer/9.2"]
    sent = FakeDestination(destination("viewer"), lambda paths: [SendOutcome(p, True, "ok") for p in paths])
    assert Outbox(store, sent).run_once() == 1, "the viewer's queue holds only its SC"
    assert {i["item_id"]: i["state"] for i in store.outbox_items()} == {
        "pacs/9.1": "pending", "pacs/9.2": "pending", "viewer/9.2": "sent"}
    assert store.study("1.2.3")["state"] == "processing", "sent only when every destination has it"  # type: ignore[index]


def test_partial_failure_keeps_the_failed_item_pending(tmp_path: Path) -> None:
    store = queued(tmp_path)
    fake = FakeDestination(destination(), lambda paths: [
        SendOutcome(p, p.name == "sr.dcm", "status 0x0000" if p.name == "sr.dcm" else "status 0xA700") for p in paths])
    assert Outbox(store, fake).run_once() == 2
    states = {i["sop_instance_uid"]: i["state"] for i in store.outbox_items()}
    assert states == {"9.1": "sent", "9.2": "pending"}
    assert store.due_outbox() == [], "the failed item waits for its backoff"
    assert store.study("1.2.3")["state"] == "processing"  # type: ignore[index]


def test_unreachable_destination_dead_letters_after_its_max_attempts_and_retry_requeues(tmp_path: Path) -> None:
    store = queued(tmp_path)

    def down(paths: list[Path]) -> list[SendOutcome]:
        raise DeliveryError("C-STORE: no association")

    fake = FakeDestination(destination(retry=OutboxSettings(max_attempts=3, backoff_seconds=0.0)), down)
    for _ in range(5):
        Outbox(store, fake).run_once(now=1e12)
    assert [len(c) for c in fake.calls] == [2, 2, 2]
    assert {i["state"] for i in store.outbox_items()} == {"dead"}
    assert all("no association" in i["last_error"] for i in store.outbox_items())
    assert store.study("1.2.3")["state"] == "failed"  # type: ignore[index]
    assert store.retry_dead(destination="elsewhere") == 0
    assert store.retry_dead(item_ids=["pacs/9.2"]) == 1
    assert {i["item_id"]: i["state"] for i in store.outbox_items()} == {"pacs/9.1": "dead", "pacs/9.2": "pending"}
    assert store.study("1.2.3")["state"] == "processing"  # type: ignore[index]


def _file(tmp_path: Path, sop_class: str, name: str) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR" if "88" in sop_class else "OT"
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _scp(contexts: list[tuple[str, list[str]]], received: list[Dataset]) -> tuple[int, object]:
    def handle_store(event: Event) -> int:
        received.append(event.dataset)
        return 0x0000

    port = free_port()
    ae = AE(ae_title="PACS")
    for sop_class, syntaxes in contexts:
        ae.add_supported_context(sop_class, syntaxes)
    return port, ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])


def test_a_destination_that_takes_no_sr_still_gets_the_sc_and_the_sr_is_dead_with_the_fix(tmp_path: Path) -> None:
    received: list[Dataset] = []
    port, server = _scp([(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])], received)
    try:
        sr, sc = _file(tmp_path, Comprehensive3DSRStorage, "sr.dcm"), _file(tmp_path, SecondaryCaptureImageStorage,
                                                                              "sc.dcm")
        store = queued(tmp_path, (("9.1", "8.1", "sr", str(sr)), ("9.2", "8.2", "sc", str(sc))))
        Outbox(store, DimseDestination(destination(port=port), "AINODE")).run_once()
        items = {i["item_id"]: i for i in store.outbox_items()}
        assert items["pacs/9.2"]["state"] == "sent" and len(received) == 1
        assert items["pacs/9.1"]["state"] == "dead" and items["pacs/9.1"]["attempts"] == 1, "no retry can help"
        assert "accepts no presentation context for Comprehensive 3D SR" in items["pacs/9.1"]["last_error"]
        assert "kinds" in items["pacs/9.1"]["last_error"], "the error names the fix"
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_contexts_fall_back_to_implicit_vr_and_to_comprehensive_sr(tmp_path: Path) -> None:
    received: list[Dataset] = []
    port, server = _scp([(ComprehensiveSRStorage, [ImplicitVRLittleEndian]),
                         (SecondaryCaptureImageStorage, [ImplicitVRLittleEndian])], received)
    try:
        sr, sc = _file(tmp_path, Comprehensive3DSRStorage, "sr.dcm"), _file(tmp_path, SecondaryCaptureImageStorage,
                                                                              "sc.dcm")
        outcomes = DimseDestination(destination(port=port), "AINODE").send([sr, sc], 30.0)
        assert [o.ok for o in outcomes] == [True, True], outcomes
        assert sorted(str(ds.SOPClassUID) for ds in received) == sorted([ComprehensiveSRStorage,
                                                                         SecondaryCaptureImageStorage])
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_an_sr_with_3d_coordinates_is_never_sent_as_comprehensive_sr(tmp_path: Path) -> None:
    received: list[Dataset] = []
    port, server = _scp([(ComprehensiveSRStorage, [ExplicitVRLittleEndian]),
                         (SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])], received)
    try:
        path = _file(tmp_path, Comprehensive3DSRStorage, "sr.dcm")
        from pydicom import dcmread

        ds = dcmread(path)
        item = Dataset()
        item.ValueType = "SCOORD3D"
        ds.ContentSequence = [item]
        ds.save_as(path)
        sc = _file(tmp_path, SecondaryCaptureImageStorage, "sc.dcm")
        outcomes = DimseDestination(destination(port=port), "AINODE").send([path, sc], 30.0)
        assert [(o.ok, o.permanent) for o in outcomes] == [(False, True), (True, False)]
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_a_slow_pacs_costs_one_failed_attempt_within_the_budget(tmp_path: Path) -> None:
    release = threading.Event()
    answered: list[float] = []

    def handle_store(event: Event) -> int:
        if not release.is_set():
            release.wait(10)  # a PACS stuck on every C-STORE: DIMSE timeouts are per message, this never ends
        answered.append(time.monotonic())
        return 0x0000

    port = free_port()
    pacs_ae = AE(ae_title="SLOWPACS")
    pacs_ae.supported_contexts = AllStoragePresentationContexts
    server = pacs_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        store = Store(tmp_path / "db")
        store.index_instance(inst("1.1"), now=1.0)
        store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
        job = store.claim_job("w", 60)
        assert job is not None
        files = [write_cr(tmp_path / f"{n}.dcm", cr_dataset("slow-pacs", n)) for n in (1, 2)]
        objects = tuple((str(cr_dataset("slow-pacs", n).SOPInstanceUID), "8.1", "sc", str(f))
                        for n, f in zip((1, 2), files))
        store.finish_run(job["run_id"], RunOutcome("d", objects, False, {
            "timings": {}, "fhir_status": "ok", "n_findings": 0, "inputs_missing": [], "sr_sop_uid": ""}), TO_PACS)
        slow = DimseDestination(destination(port=port, retry=OutboxSettings(backoff_seconds=2.0)), "AINODE")
        outbox = Outbox(store, slow, attempt_budget_seconds=1.0)
        started = time.monotonic()
        assert outbox.run_once() == 2
        took = time.monotonic() - started
        print(f"slow PACS: delivery attempt ended after {took:.1f} s, budget 1 s")
        assert 1.0 <= took < 2.5
        items = store.outbox_items()
        assert {i["state"] for i in items} == {"pending"} and {i["attempts"] for i in items} == {1}
        assert all("past its budget of 1 s" in i["last_error"] for i in items)
        assert store.due_outbox() == [] and store.due_outbox(now=time.time() + 2.5) != [], "backoff, then retry"
        release.set()
        assert outbox.run_once(now=time.time() + 2.5) == 2
        assert {i["state"] for i in store.outbox_items()} == {"sent"}
    finally:
        release.set()
        server.shutdown()
