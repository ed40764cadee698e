"""Calling and called AE title checks on the real node process, with dcmtk as the modality and Orthanc as the PACS
the node writes results into: an unknown caller is refused (A-ASSOCIATE-RJ reason 3) and nothing of its study is
stored or sent, while an allowed caller's study goes all the way to an SR in Orthanc; a wrong called AE title is
reason 7; an AE title bound to a host is refused from any other (pynetdicom binds the source address there, which
dcmtk cannot).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.localpeers.orthanc import Orthanc
from node.store import Store
from node_fakes import cr_dataset, write_cr
from peers import TOOL_ENV, NodeProcess, echoscu, results_in_orthanc, wait_for
from secured import node_with
from test_node_e2e import real_cr_path

pytestmark = pytest.mark.integration

SECURITY = """
[security]
require_called_ae_title = true
[[security.caller]]
ae_title = "MODALITY"
hosts = ["127.0.0.1"]
[[security.caller]]
ae_title = "BOUND"
hosts = ["127.0.0.2/32"]
"""


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pacs: Orthanc) -> Iterator[NodeProcess]:
    proc = node_with(tmp_path_factory.mktemp("ae") / "node", SECURITY, pacs=pacs, pipelines=True).start()
    yield proc
    proc.stop()


def dcmtk_store(port: int, path: Path, calling: str, called: str = "AINODE") -> tuple[int, str]:
    done = subprocess.run(["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, env=TOOL_ENV, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_unknown_calling_ae_is_refused_and_nothing_reaches_the_pacs(node: NodeProcess, pacs: Orthanc,
                                                                    tmp_path: Path) -> None:
    intruder = cr_dataset("intruder", 1)
    rc, out = dcmtk_store(node.port, write_cr(tmp_path / "intruder.dcm", intruder), calling="INTRUDER")
    assert rc != 0 and "Calling AE Title Not Recognized" in out, out
    # the control: an allowed modality's study is stored, processed and its SR written into this PACS
    real = real_cr_path()
    allowed_study = str(dcmread(real, stop_before_pixels=True).StudyInstanceUID)
    t0 = time.monotonic()
    rc, out = dcmtk_store(node.port, real, calling="MODALITY")
    assert rc == 0, out
    wait_for(lambda: results_in_orthanc(pacs, allowed_study)["SR"], 60, "the allowed study's SR in Orthanc")
    took = time.monotonic() - t0
    store = Store(node.workdir / "data" / "node.db")
    try:
        assert store.study(str(intruder.StudyInstanceUID)) is None
        assert store.study_instances(str(intruder.StudyInstanceUID)) == []
    finally:
        store.close()
    assert str(intruder.StudyInstanceUID) not in {s["study_uid"] for s in node.api_studies()}
    assert pacs.study_id(str(intruder.StudyInstanceUID)) is None
    print(f"unknown calling AE: storescu refused with reason 3 (Calling AE Title Not Recognized), nothing stored, "
          f"nothing in Orthanc; the allowed caller's study had its SR in Orthanc {took:.1f} s after storescu")


def test_wrong_called_ae_title_is_reason_7(node: NodeProcess) -> None:
    done = echoscu(node.port, ae_title="NOTTHENODE")
    assert done.returncode != 0 and "Called AE Title Not Recognized" in done.stdout + done.stderr
    assert echoscu(node.port).returncode == 0
    print("wrong called AE title: echoscu refused with reason 7 (Called AE Title Not Recognized); right one served")


def pynetdicom_echo(port: int, calling: str, source: str) -> tuple[bool, int | None]:
    """(established, the A-ASSOCIATE-RJ reason when refused) for an echo from ``source``."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE", bind_address=(source, 0))
    if assoc.is_established:
        assoc.release()
        return True, None
    primitive = assoc.acceptor.primitive
    return False, None if primitive is None else int(primitive.diagnostic or 0)


def test_ae_title_bound_to_a_host_is_refused_from_another(node: NodeProcess) -> None:
    done = echoscu(node.port, ae_title="AINODE")  # peers.echoscu calls as MODALITY from 127.0.0.1: allowed
    assert done.returncode == 0
    rc, out = dcmtk_store(node.port, write_cr(Path(node.workdir) / "bound.dcm", cr_dataset("bound", 1)), "BOUND")
    assert rc != 0 and "Calling AE Title Not Recognized" in out, out
    assert pynetdicom_echo(node.port, "BOUND", "127.0.0.1") == (False, 3)
    assert pynetdicom_echo(node.port, "BOUND", "127.0.0.2") == (True, None)
    assert pynetdicom_echo(node.port, "MODALITY", "127.0.0.2") == (False, 3)
    print("host binding: BOUND refused from 127.0.0.1 (dcmtk and pynetdicom, reason 3), accepted from 127.0.0.2; "
          "MODALITY refused from 127.0.0.2")
