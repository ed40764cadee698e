"""Delivery against real peers: Orthanc over C-STORE and over DICOMweb STOW-RS (two Orthancs), dcmtk storescu as
the modality, the shipped radiograph-lesion pipeline, the FHIR engine.

- Orthanc stopped while results are pending and started two minutes later: every result arrives, once each.
- Processing the same study twice (sent again; reprocessed; even with the node's database lost) leaves exactly
  one SR, one set of SC and one GSPS in Orthanc.
- A STOW-RS destination receives the same objects as the C-STORE one.

``DELIVERY_DOWNTIME_SECONDS`` shortens the outage for a quick local run; the README's test command keeps 120.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import Dataset

from node.localpeers.fhir import FhirEngine
from node.localpeers.orthanc import Orthanc
from node.store import Store
from devtools.synthetic.cohort import DemoCase, write_demo_study

from peers import NodeProcess, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration

DOWNTIME_SECONDS = float(os.environ.get("DELIVERY_DOWNTIME_SECONDS", "120"))
# retries every few seconds, and never dead-lettered within the outage
FAST_RETRIES = "[outbox]\nmax_attempts = 1000\nbackoff_seconds = 1\nbackoff_max_seconds = 5\n"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> DemoCase:
    return write_demo_study(tmp_path_factory.mktemp("delivery-case"), seed=7)


@pytest.fixture(scope="module")
def fhir(case: DemoCase) -> Iterator[FhirEngine]:
    with FhirEngine() as engine:
        engine.post_bundle(case.fhir_bundle)
        yield engine


def node_results(db: Path, study_uid: str) -> dict[str, str]:
    """SOP Instance UID -> kind of every result object the node wrote for the study."""
    store = Store(db)
    try:
        return {r["sop_instance_uid"]: r["kind"] for r in store.db.query(
            "SELECT sop_instance_uid, kind FROM results WHERE study_uid = ?", [study_uid])}
    finally:
        store.close()


def uids(found: dict[str, list[Dataset]]) -> list[str]:
    return sorted(str(ds.SOPInstanceUID) for objects in found.values() for ds in objects)


def one_of_each(found: dict[str, list[Dataset]], n_sc: int, n_pr: int) -> None:
    """One SR, and the SCs and presentation states of one run: one GSPS per group of images that share size,
    rescale and polarity (the demo's two views may differ, e.g. MONOCHROME1 and MONOCHROME2)."""
    assert len(found["SR"]) == 1, f"{len(found['SR'])} SRs"
    assert len(found["SC"]) == n_sc, f"{len(found['SC'])} SCs, expected {n_sc}"
    assert len(found["PR"]) == n_pr, f"{len(found['PR'])} presentation states, expected {n_pr}"
    assert found["KO"] == [], "nothing was amended"


def test_orthanc_down_for_two_minutes_then_every_result_arrives_once(
    tmp_path: Path, fhir: FhirEngine, case: DemoCase
) -> None:
    pacs = Orthanc(workdir=tmp_path / "orthanc").start()
    node = NodeProcess(tmp_path / "node", pacs, fhir.base_url, extra_toml=FAST_RETRIES).start()
    try:
        pacs.stop()
        down_since = time.monotonic()
        assert storescu(node.port, case.files).returncode == 0
        db = node.workdir / "data" / "node.db"

        def retried() -> bool:
            store = Store(db)
            try:
                items = store.outbox_items()
                return bool(items) and all(i["state"] == "pending" and i["attempts"] >= 2 for i in items)
            finally:
                store.close()

        wait_for(retried, 120, "results pending with failed attempts while Orthanc is down")
        time.sleep(max(0.0, DOWNTIME_SECONDS - (time.monotonic() - down_since)))
        store = Store(db)
        attempts = max(i["attempts"] for i in store.outbox_items())
        assert {i["state"] for i in store.outbox_items()} == {"pending"}, "nothing dead-lettered during the outage"
        store.close()
        print(f"Orthanc down {time.monotonic() - down_since:.0f} s; {attempts} attempts per object meanwhile")
        pacs.start()
        back = time.monotonic()
        wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 60, "delivery once Orthanc is back")
        print(f"every result in Orthanc {time.monotonic() - back:.1f} s after it came back")
        found = results_in_orthanc(pacs, case.study_instance_uid)
        written = node_results(db, case.study_instance_uid)
        assert uids(found) == sorted(written), "every object the node wrote arrived, and nothing else"
        one_of_each(found, n_sc=sum(kind == "sc" for kind in written.values()),
                    n_pr=sum(kind == "gsps" for kind in written.values()))
    finally:
        node.stop()
        pacs.stop()


def test_the_same_study_processed_twice_leaves_one_sr_one_set_of_sc_and_one_gsps(
    tmp_path: Path, fhir: FhirEngine, case: DemoCase
) -> None:
    with Orthanc(workdir=tmp_path / "orthanc") as pacs:
        node = NodeProcess(tmp_path / "node", pacs, fhir.base_url).start()
        try:
            assert storescu(node.port, case.files).returncode == 0
            wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 120, "the first results")
            first = results_in_orthanc(pacs, case.study_instance_uid)
            n_sc, n_pr = len(first["SC"]), len(first["PR"])
            assert n_sc >= 1, "the demo study has findings"
            written = node_results(node.workdir / "data" / "node.db", case.study_instance_uid)
            assert n_pr == sum(kind == "gsps" for kind in written.values()) >= 1
            one_of_each(first, n_sc, n_pr)

            # 1. the modality sends the study again: same inputs, nothing new
            assert storescu(node.port, case.files).returncode == 0
            wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 120, "the re-sent study settled")
            # 2. an operator forces a re-run: the pipeline runs, its inputs are unchanged, nothing is sent
            node.cli("reprocess", case.study_instance_uid)
            wait_for(lambda: node.study_status(case.study_instance_uid) == "sent"
                     and node.runs(case.study_instance_uid) >= 2, 120, "the reprocessed study settled")
            # 3. the node loses its database and spool (a rebuilt server) and gets the study again: the result
            # UIDs are derived from the inputs, so Orthanc receives the very same objects and keeps one copy
            node.stop()
            shutil.rmtree(node.workdir / "data")
            node.start()
            assert storescu(node.port, case.files).returncode == 0
            wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 120, "results of the rebuilt node")
            again = results_in_orthanc(pacs, case.study_instance_uid)
            one_of_each(again, n_sc, n_pr)
            assert uids(again) == uids(first)
        finally:
            node.stop()


def test_a_stow_rs_destination_receives_the_same_objects_as_the_c_store_one(
    tmp_path: Path, fhir: FhirEngine, case: DemoCase
) -> None:
    with Orthanc(workdir=tmp_path / "pacs") as pacs, Orthanc(workdir=tmp_path / "archive", ae_title="ARCHIVE") as archive:
        stow = f'[[destination]]\nname = "archive"\ntype = "stow-rs"\nurl = "{archive.url}/dicom-web"\n'
        node = NodeProcess(tmp_path / "node", pacs, fhir.base_url, extra_toml=stow).start()
        try:
            assert storescu(node.port, case.files).returncode == 0
            wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 120, "delivery to both")
            over_dimse = results_in_orthanc(pacs, case.study_instance_uid)
            over_stow = results_in_orthanc(archive, case.study_instance_uid)
            written = node_results(node.workdir / "data" / "node.db", case.study_instance_uid)
            assert uids(over_stow) == uids(over_dimse) == sorted(written)
            one_of_each(over_stow, n_sc=len(over_dimse["SC"]), n_pr=len(over_dimse["PR"]))
            by_uid = {str(ds.SOPInstanceUID): ds for objects in over_dimse.values() for ds in objects}
            for ds in (d for objects in over_stow.values() for d in objects):
                other = by_uid[str(ds.SOPInstanceUID)]
                assert ds.SOPClassUID == other.SOPClassUID
                # the same object, element for element (the file meta may differ: each archive writes its own)
                assert ds == other, f"{ds.Modality} {ds.SOPInstanceUID} differs between the archives"
            store = Store(node.workdir / "data" / "node.db")
            audit = [r["actor"] for r in store.audit_records(kind="result-sent")]
            store.close()
            assert audit.count("archive") == audit.count("pacs") == len(written)
        finally:
            node.stop()


# dcmtk storescp as an archive that takes images and presentation states, not SR, and only Implicit VR Little Endian
NO_SR_SCP = """
[[TransferSyntaxes]]
[ImplicitOnly]
TransferSyntax1 = 1.2.840.10008.1.2
[[PresentationContexts]]
[NoStructuredReports]
PresentationContext1 = 1.2.840.10008.5.1.4.1.1.7\\ImplicitOnly
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.11.1\\ImplicitOnly
[[Profiles]]
[NoSR]
PresentationContexts = NoStructuredReports
"""


def test_a_destination_that_rejects_sr_still_gets_the_sc_and_gsps(
    tmp_path: Path, fhir: FhirEngine, case: DemoCase
) -> None:
    import subprocess

    from node.localpeers import stop_process
    from node.localpeers.orthanc import free_port
    from pydicom import dcmread

    from peers import TOOL_ENV

    (tmp_path / "scp.cfg").write_text(NO_SR_SCP)
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    scp = subprocess.Popen(["storescp", "-xf", str(tmp_path / "scp.cfg"), "NoSR", "-aet", "IMAGES", "-od",
                            str(received), str(port)], env=TOOL_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    images = f'[[destination]]\nname = "images"\ntype = "dimse"\nae_title = "IMAGES"\nhost = "127.0.0.1"\nport = {port}\n'
    try:
        with Orthanc(workdir=tmp_path / "pacs") as pacs:
            node = NodeProcess(tmp_path / "node", pacs, fhir.base_url, extra_toml=images).start()
            try:
                assert storescu(node.port, case.files).returncode == 0
                wait_for(lambda: node.study_status(case.study_instance_uid) in ("sent", "failed"), 120,
                         "deliveries settled")
                written = node_results(node.workdir / "data" / "node.db", case.study_instance_uid)
                n_sc = sum(kind == "sc" for kind in written.values())
                n_pr = sum(kind == "gsps" for kind in written.values())
                wait_for(lambda: len(list(received.iterdir())) >= n_sc + n_pr, 60, "every SC and GSPS received")
                got = [dcmread(p) for p in received.iterdir()]
                sc, gsps = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.11.1"
                assert sorted(str(ds.SOPClassUID) for ds in got) == sorted([sc] * n_sc + [gsps] * n_pr), \
                    "every SC and the GSPS, in spite of the SR refused"
                assert {str(ds.file_meta.TransferSyntaxUID) for ds in got} == {"1.2.840.10008.1.2"}
                dead = node.cli("outbox", "list", "--destination", "images")
                assert "dead    images/" in dead and "accepts no presentation context for Comprehensive 3D SR" in dead
                assert "1 item(s)" in dead, "only the SR is dead, after one attempt"
                assert len(results_in_orthanc(pacs, case.study_instance_uid)["SR"]) == 1, "the PACS got the SR"
            finally:
                node.stop()
    finally:
        stop_process(scp, timeout=10)
