"""Privacy against the real node process (log level DEBUG), dcmtk-style raw sends, Orthanc and the FHIR engine:
1,000 malformed payloads carrying a patient name and ID leave neither in the log, and repeats are rate-limited;
the audit trail records associations, EHR reads and results sent, and its FHIR export is accepted by a FHIR
server as a transaction of AuditEvents.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

from node.localpeers.fhir import FhirEngine
from node.localpeers.orthanc import Orthanc
from devtools.synthetic.cohort import write_demo_study

from node_fakes import cr_dataset, write_cr
from peers import NodeProcess, storescu, wait_for

pytestmark = pytest.mark.integration

SECRET_NAME = "Zzsecretname"
SECRET_ID = "PHI987654"


def malformed_payloads(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` mutations of a CR whose name, ID and (invalid) age carry the secrets; the file meta stays valid."""
    ds = cr_dataset("privacy", 1)
    ds.PatientName = f"{SECRET_NAME}^Patient^x^y^z^{'w' * 70}"  # too many components, one too long: invalid PN
    ds.PatientID = SECRET_ID * 8  # 72 characters: an invalid LO
    ds.PatientAge = SECRET_ID  # not an AS value
    ds.OtherPatientIDs = SECRET_ID
    root.mkdir(parents=True, exist_ok=True)
    base = write_cr(root / "base.dcm", ds).read_bytes()
    meta_end = base.index(b"\x08\x00\x16\x00")  # the first dataset element after the file meta group
    secrets = [(m.start(), m.end()) for s in (SECRET_NAME.encode(), SECRET_ID.encode())
               for m in re.finditer(s, base)]
    rng = random.Random(seed)
    out = []
    for k in range(n):
        body = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(meta_end, min(len(body), meta_end + 1200))  # the header, where structure lives
            if any(a <= pos < b for a, b in secrets):
                continue  # keep the secrets on the wire
            body[pos] = rng.randrange(256)
        path = root / f"m{k}.dcm"
        path.write_bytes(bytes(body))
        out.append(path)
    return out


def send_raw(port: int, paths: list[Path]) -> dict[str, int]:
    """C-STORE each file's bytes as they are, over as few associations as the node allows."""
    outcome = {"stored": 0, "refused": 0, "lost": 0}
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        pending = list(paths)
        while pending:
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
            assert assoc.is_established
            while pending and assoc.is_established:
                status = assoc.send_c_store(pending.pop(0))
                if status is None or "Status" not in status:
                    outcome["lost"] += 1
                    continue
                code = int(status.Status)
                outcome["stored" if code == 0 else "refused"] += 1
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return outcome


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FhirEngine, Orthanc, Path]]:
    root = tmp_path_factory.mktemp("privacy")
    case = write_demo_study(root / "case", seed=5)
    with FhirEngine() as fhir, Orthanc(workdir=root / "orthanc") as pacs:
        fhir.post_bundle(case.fhir_bundle)
        yield fhir, pacs, root


@pytest.fixture(scope="module")
def node(peers: tuple[FhirEngine, Orthanc, Path]) -> Iterator[NodeProcess]:
    fhir, pacs, root = peers
    proc = NodeProcess(root / "node", pacs, fhir.base_url, log_level="DEBUG").start()
    yield proc
    proc.stop()


def test_malformed_payloads_leave_no_patient_name_or_id_in_the_debug_log(
    node: NodeProcess, peers: tuple[FhirEngine, Orthanc, Path]
) -> None:
    payloads = malformed_payloads(peers[2] / "payloads", 1000)
    outcome = send_raw(node.port, payloads)
    assert outcome["stored"] > 0 and outcome["refused"] > 0, outcome  # both paths were exercised
    wait_for(lambda: all(s["status"] not in ("receiving", "processing") for s in node.api_studies()), 120,
             "the stored payloads' studies to be processed")
    log = node.log.read_text(errors="replace")
    names, ids = log.count(SECRET_NAME), log.count(SECRET_ID)
    print(f"1000 malformed payloads ({outcome}): log {len(log.encode()) / 1024:.0f} KiB, "
          f"{len(log.splitlines())} lines, patient name {names}x, patient ID {ids}x")
    assert names == 0 and ids == 0
    assert "<redacted>" in log, "library warnings about the bad values never reached the log: nothing was tested"
    assert len(log.encode()) < 2_000_000, "repeated bad input must not flood the log"


def test_audit_trail_records_who_did_what_and_exports_as_fhir(
    node: NodeProcess, peers: tuple[FhirEngine, Orthanc, Path]
) -> None:
    fhir, pacs, root = peers
    case = write_demo_study(root / "audited", seed=5)  # the patient whose labs and note the FHIR engine holds
    assert storescu(node.port, case.files).returncode == 0
    wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 90, "the study to be sent")
    out = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "--config", str(node.config), "--fhir", "--transaction"],
        capture_output=True, text=True, check=True,
    )
    bundle = json.loads(out.stdout)
    assert case.patient_id not in out.stdout, "a patient ID in the audit export"
    events = [e["resource"] for e in bundle["entry"]]
    kinds = {(e["type"]["code"], e.get("outcomeDesc")) for e in events}
    assert ("rest", "ok") in kinds, "the EHR read was not audited"
    assert ("110104", "sent") in kinds and ("110104", "released") in kinds and ("110100", "loaded") in kinds
    assoc = [e for e in events if e.get("outcomeDesc") == "released" and any(
        d["type"] == "instances_stored" and d["valueString"] == str(len(case.files))
        for ent in e.get("entity", []) for d in ent.get("detail", []))]
    assert assoc, "no association record with the number of instances storescu sent"
    response = httpx.post(fhir.base_url + "/", json=bundle, timeout=60,
                          headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 200, response.text[:1000]
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    print(f"audit export: {len(events)} AuditEvents, FHIR server answered {sorted(set(statuses))}")
    assert all(s.startswith("201") for s in statuses)
