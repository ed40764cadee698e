"""An EHR that trickles its answers (a byte a second, so no per-read timeout ever fires) costs a study no more than
``budgets.fhir_seconds``: the study completes image-only, its SR says the EHR status "timeout", and the study behind
it is not held up past that budget. Real peers: Orthanc (the PACS) and dcmtk storescu; the EHR is a small HTTP server
in this test, over real sockets.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from node.localpeers.orthanc import Orthanc
from node.results.sr import read_findings

from node_fakes import FakePipeline, cr_dataset, write_cr
from peers import InProcessNode, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration

BUDGET = 4.0
BUNDLE = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()


class TricklingEhr:
    """Answers searches for patient "SLOW-1" one byte per second; any other patient at once, with no match."""

    def __init__(self) -> None:
        trickled: list[float] = []
        self.trickled = trickled

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                slow = "SLOW-1" in self.path
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(BUNDLE)))
                self.end_headers()
                try:
                    for i in range(len(BUNDLE)):
                        if slow:
                            time.sleep(1.0)
                            trickled.append(time.monotonic())
                        self.wfile.write(BUNDLE[i:i + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the node stopped listening: what the budget is for

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir/R4"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def ehr() -> Iterator[TricklingEhr]:
    server = TricklingEhr()
    yield server
    server.close()


def test_a_trickling_ehr_costs_a_study_its_budget_and_no_more(tmp_path: Path, pacs: Orthanc, ehr: TricklingEhr) -> None:
    node = InProcessNode(tmp_path / "node", pacs, FakePipeline(), quiet_seconds=1.0, extra={
        "fhir": {"base_url": ehr.url, "timeout_seconds": 2.0},  # per read: never fires on a byte a second
        "budgets": {"fhir_seconds": BUDGET},
    }).start()
    try:
        files = {}
        for name, patient in (("slow", "SLOW-1"), ("next", "QUICK-2")):
            ds = cr_dataset(f"fhir-{name}-{time.time()}", 1, patient_id=patient)
            files[name] = (str(ds.StudyInstanceUID), write_cr(tmp_path / f"{name}.dcm", ds))
        for _, path in files.values():  # back to back: the second study queues behind the first
            done = storescu(node.port, [path])
            assert done.returncode == 0, done.stderr
        for study_uid, _ in files.values():
            wait_for(lambda: node.settled(study_uid), 60, "the study to settle")

        took: dict[str, float] = {}
        waited: dict[str, float] = {}
        for name, (study_uid, _) in files.items():
            study = node.study(study_uid)
            store = node.store()
            (job,) = store.jobs(study_uid)
            (run,) = store.runs(job["job_id"])
            store.close()
            assert study is not None and study["state"] == "sent" and job["state"] == "sent"
            took[name] = float(job["updated_at"]) - float(study["completed_at"])
            waited[name] = float(run["started_at"]) - float(study["completed_at"])
            (sr,) = results_in_orthanc(pacs, study_uid)["SR"]
            summary = read_findings(sr)
            expected = "timeout" if name == "slow" else "patient-not-found"
            assert job["fhir_status"] == summary.fhir_status == expected
            assert {"labs", "notes"} <= set(summary.inputs_missing) and len(summary.findings) == 1
        print(f"slow FHIR: study delivered image-only (EHR status 'timeout') {took['slow']:.1f} s after it was "
              f"complete, budget {BUDGET:g} s (the EHR's whole answer would take {len(BUNDLE)} s); the study behind "
              f"it waited {waited['next']:.1f} s for the worker and was delivered {took['next']:.1f} s after it was "
              "complete")
        assert took["slow"] < BUDGET + 3.0
        assert waited["next"] < BUDGET + 2.5, "the next study must not wait past the slow one's budget (+ its results)"
        assert took["next"] < BUDGET + 4.0
        assert ehr.trickled, "the EHR must really have trickled"
        time.sleep(2.0)
        last = ehr.trickled[-1]
        time.sleep(2.0)
        assert ehr.trickled[-1] == last, "the node must have stopped reading the trickle"
        assert httpx.get(f"http://127.0.0.1:{node.http_port}/healthz").status_code == 200
    finally:
        node.stop()
