"""Outbox: items leave 'pending' only on a stored status; failures back off exponentially, then dead-letter; an
attempt against a PACS that answers too slowly ends at its budget and counts as one failed attempt."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from node.config import OutboxSettings, PacsSettings
from node.outbox import Outbox, backoff
from node.pacs import PacsError, SendOutcome
from node.store import JobPlan, RunOutcome, Store
from node.localpeers.orthanc import free_port
from node_fakes import cr_dataset, write_cr
from test_store import inst

PACS = PacsSettings("ORTHANC", "127.0.0.1", 4242)


def queued(tmp_path: Path, db_name: str = "db") -> Store:
    store = Store(tmp_path / db_name)
    store.index_instance(inst("1.1"), now=1.0)
    store.complete_study("1.2.3", "quiet", [JobPlan("p", "1", ("1.1",))], now=2.0)
    job = store.claim_job("w", 60, now=3.0)
    assert job is not None
    store.finish_run(
        job["run_id"],
        RunOutcome("digest", (("9.1", "8.1", "sr", "/r/sr.dcm"), ("9.2", "8.2", "sc", "/r/sc-1.dcm")), False,
                   {"timings": {}, "fhir_status": "ok", "n_findings": 1, "inputs_missing": [], "sr_sop_uid": "9.1"}),
        "pacs", now=4.0,
    )
    return store


def test_backoff_doubles_and_caps() -> None:
    s = OutboxSettings(max_attempts=8, backoff_seconds=2.0, backoff_max_seconds=10.0)
    assert [backoff(s, n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 10.0]


def test_partial_failure_keeps_the_failed_item_pending(tmp_path: Path) -> None:
    store = queued(tmp_path)

    def sender(pacs: PacsSettings, ae: str, paths: list[Path], budget: float) -> list[SendOutcome]:
        return [SendOutcome(p, p.name == "sr.dcm", "status 0x0000" if p.name == "sr.dcm" else "status 0xA700")
                for p in paths]

    outbox = Outbox(store, PACS, OutboxSettings(), "AINODE", sender)
    assert outbox.run_once() == 2
    states = {i["sop_instance_uid"]: i["state"] for i in store.outbox_items()}
    assert states == {"9.1": "sent", "9.2": "pending"}
    assert store.due_outbox() == [], "the failed item waits for its backoff"
    assert store.study("1.2.3")["state"] == "processing"  # type: ignore[index]


def test_unreachable_pacs_dead_letters_after_max_attempts(tmp_path: Path) -> None:
    store = queued(tmp_path)
    calls: list[int] = []

    def down(pacs: PacsSettings, ae: str, paths: list[Path], budget: float) -> list[SendOutcome]:
        calls.append(len(paths))
        raise PacsError("C-STORE: no association")

    outbox = Outbox(store, PACS, OutboxSettings(max_attempts=3, backoff_seconds=0.0), "AINODE", down)
    for _ in range(5):
        outbox.run_once(now=1e12)
    assert calls == [2, 2, 2]
    assert {i["state"] for i in store.outbox_items()} == {"dead"}
    assert store.study("1.2.3")["state"] == "failed"  # type: ignore[index]


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
            "timings": {}, "fhir_status": "ok", "n_findings": 0, "inputs_missing": [], "sr_sop_uid": ""}), "pacs")
        outbox = Outbox(store, PacsSettings("SLOWPACS", "127.0.0.1", port), OutboxSettings(backoff_seconds=2.0),
                        "AINODE", attempt_budget_seconds=1.0)
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
