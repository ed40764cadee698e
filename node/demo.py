"""The README's demo: Orthanc as the PACS, the FHIR engine with the demo patient, and the node, all real;
Orthanc sends a generated study to the node the way a routing rule would, and the results come back.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from io import BytesIO
from pathlib import Path

import highdicom as hd
from pydicom import dcmread

from node.config import parse_settings
from node.localpeers.fhir import FhirEngine
from node.localpeers.ohif import OHIF_DIST, OhifViewer
from node.localpeers.orthanc import Orthanc, free_port
from node.results.sc import overlay_png
from node.results.sr import read_findings
from node.service import Node
from node.store import Store

log = logging.getLogger("node.demo")

NODE_AE = "AINODE"
MODALITY_NAME = "ainode"


def _wait_for_study(node: Node, study_uid: str, timeout: float) -> dict[str, object] | None:
    deadline = time.monotonic() + timeout
    store = Store(node.db_path)
    try:
        while time.monotonic() < deadline:
            study = store.study(study_uid)
            if study is not None and study["state"] in ("sent", "failed", "no-pipeline"):
                return study
            time.sleep(0.5)
        return store.study(study_uid)
    finally:
        store.close()


def _report(node: Node, pacs: Orthanc, study_uid: str, workdir: Path) -> tuple[bool, int]:
    """Print what is in Orthanc now; returns (SR found, number of SCs found)."""
    store = Store(node.db_path)
    results = list(store.db.query("SELECT * FROM results WHERE study_uid = ? ORDER BY kind DESC", [study_uid]))
    store.close()
    sr_found, n_sc = False, 0
    for row in results:
        orthanc_id = pacs.find_instance(row["sop_instance_uid"])
        if orthanc_id is None:
            print(f"  {row['kind'].upper()} {row['sop_instance_uid']}: NOT in Orthanc")
            continue
        data = pacs.instance_file(orthanc_id)
        if row["kind"] == "sr":
            sr_found = True
            summary = read_findings(hd.sr.srread(BytesIO(data)))  # read back the way a viewer's toolkit would
            print(f"\nStructured Report ({summary.algorithm_name} {summary.algorithm_version}), in Orthanc:")
            print(f"  {pacs.url}/instances/{orthanc_id}/file")
            print(f"  {pacs.url}/app/explorer.html#instance?uuid={orthanc_id}")
            print(f"  clinical context: FHIR {summary.fhir_status}; missing inputs: "
                  f"{', '.join(summary.inputs_missing) or 'none'}")
            if not summary.analysed:
                print("  not analysed: " + "; ".join(f"{e.reason} ({e.detail})" for e in summary.instances_excluded))
            elif summary.nothing_found:
                print(f"  nothing found above the detection threshold {summary.detection_threshold:g}")
            for f in summary.findings:
                x0, y0, x1, y1 = f.box
                print(f"  - {f.tracking_id}: {f.class_meaning} (p={f.probability:.2f}), detector score "
                      f"{f.detection_score:.2f}, box ({x0:.0f},{y0:.0f})-({x1:.0f},{y1:.0f}) px")
        elif row["kind"] == "sc":
            n_sc += 1
            png = workdir / f"overlay-{n_sc}.png"
            overlay_png(dcmread(BytesIO(data)), png)
            print(f"\nSecondary Capture overlay {n_sc}, in Orthanc:")
            print(f"  {pacs.url}/instances/{orthanc_id}/preview")
            print(f"  written to {png}")
        elif row["kind"] == "gsps":
            state = dcmread(BytesIO(data))
            images = sum(len(s.ReferencedImageSequence) for s in state.ReferencedSeriesSequence)
            boxes = sum(len(a.get("GraphicObjectSequence", [])) for a in state.GraphicAnnotationSequence)
            print(f"\nPresentation state (GSPS) over {images} image(s), {boxes} box(es), in Orthanc:")
            print(f"  {pacs.url}/instances/{orthanc_id}/file")
    return sr_found, n_sc


def _report_worklist(base_url: str, study_uid: str) -> bool:
    """Print the Task and DiagnosticReport the node wrote to the FHIR engine; True when the Task is there."""
    import httpx

    from node.delivery.fhir import REPORT_ID_SYSTEM, TASK_ID_SYSTEM

    key = f"{study_uid}/radiograph-lesion"  # the demo study goes to the shipped radiograph pipeline
    tasks = httpx.get(f"{base_url}/Task", params={"identifier": f"{TASK_ID_SYSTEM}|{key}"},
                      timeout=10).json().get("entry", [])
    if not tasks:
        print("\nFHIR Task: NOT in the FHIR engine")
        return False
    task = tasks[0]["resource"]
    print(f"\nFHIR Task (what a worklist reads), in the FHIR engine:\n  {base_url}/Task/{task['id']}\n"
          f"  status {task['status']}, priority {task['priority']}: {task.get('description', '')}")
    reports = httpx.get(f"{base_url}/DiagnosticReport", params={"identifier": f"{REPORT_ID_SYSTEM}|{key}"},
                        timeout=10).json().get("entry", [])
    for entry in reports:
        report = entry["resource"]
        print(f"FHIR DiagnosticReport {report['id']} ({report['status']}), {len(report.get('result', []))} "
              f"Observation(s): {base_url}/DiagnosticReport/{report['id']}")
    return True


def _demo_account(node: Node) -> str:
    """An admin account 'demo' with a new random password, for the worklist (this demo's database only)."""
    import secrets

    from node.web.auth import hash_password

    password = secrets.token_urlsafe(9)
    store = node.open_store()
    try:
        store.add_user("demo", hash_password(password), "admin")
    finally:
        store.close()
    return password


def run_demo(workdir: Path, once: bool, timeout: float = 600.0) -> int:
    from devtools.synthetic.cohort import write_demo_study

    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "orthanc").mkdir(parents=True)
    case = write_demo_study(workdir / "study")
    bundle_path = workdir / "fhir-bundle.json"
    bundle_path.write_text(json.dumps(case.fhir_bundle, indent=1))
    print(f"demo study: {len(case.files)} CR image(s), synthetic patient, bundle of labs and notes for the FHIR engine")

    node_port, http_port = free_port(), free_port()
    with FhirEngine(load=bundle_path) as fhir, \
            Orthanc(modalities={MODALITY_NAME: (NODE_AE, "127.0.0.1", node_port)},
                    workdir=workdir / "orthanc") as pacs:
        # OHIF Viewer 3 on Orthanc's DICOMweb, where the SR draws its boxes (when deploy/viewer is installed).
        viewer = OhifViewer(f"{pacs.url}/dicom-web").start() if (OHIF_DIST / "index.html").is_file() else None
        settings = parse_settings(
            {
                "node": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": node_port,
                         "data_dir": str(workdir / "node-data"), "http_port": http_port},
                "pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port},
                "fhir": {"base_url": fhir.base_url, "patient_identifier_system": "urn:dicom-ai-node:synthetic-mrn"},
                # the report also goes where worklists read it: a FHIR Task with the AI priority, a DiagnosticReport
                "destination": [{"name": "ehr", "type": "fhir", "url": fhir.base_url,
                                 "patient_identifier_system": "urn:dicom-ai-node:synthetic-mrn"}],
                "assembly": {"quiet_seconds": 5},
                **({"web": {"viewer_url": viewer.study_url("{study_uid}")}} if viewer is not None else {}),
            },
            base_dir=workdir,
        )
        node = Node(settings)
        password = _demo_account(node)
        node.start()
        try:
            print(f"worklist:       http://127.0.0.1:{http_port}/  (user 'demo', password '{password}')")
            print(f"Orthanc (PACS): {pacs.url}/app/explorer.html  DICOM {pacs.ae_title}@127.0.0.1:{pacs.dicom_port}")
            print(f"FHIR engine:    {fhir.base_url}")
            print(f"node:           DICOM {NODE_AE}@127.0.0.1:{node_port}, status http://127.0.0.1:{http_port}/api/studies "
                  f"(Authorization: Bearer <{node.data_dir / 'api-token'}>)")
            print("loading the pipeline ...")
            node.pipelines_ready.wait(timeout=300)
            ids = {pacs.upload(path)["ParentStudy"] for path in case.files}
            print("Orthanc sends the study to the node (POST /modalities/ainode/store) ...")
            t0 = time.monotonic()
            pacs.send_to_modality(MODALITY_NAME, sorted(ids))
            study = _wait_for_study(node, case.study_instance_uid, timeout)
            state = study["state"] if study else "not received"
            print(f"study {state} after {time.monotonic() - t0:.1f} s")
            sr_found, n_sc = _report(node, pacs, case.study_instance_uid, workdir)
            task_found = _report_worklist(fhir.base_url, case.study_instance_uid)
            if viewer is not None:
                print(f"\nOHIF Viewer (double-click the SR's thumbnail to see the boxes):\n"
                      f"  {viewer.study_url(case.study_instance_uid)}")
            else:
                print(f"\nOHIF Viewer not installed ({OHIF_DIST}): bash deploy/setup.sh (deploy/viewer/ohif.pin)")
            truth = ", ".join(f"{label} at ({b[0]:.0f},{b[1]:.0f})-({b[2]:.0f},{b[3]:.0f})" for b, label in case.truth)
            print(f"\nsynthetic ground truth (for comparison): {truth}")
            ok = state == "sent" and sr_found and n_sc >= 1 and task_found
            print(f"\nOrthanc keeps its data in {pacs.workdir}; serve it again later with:"
                  f"\n  TCP_NODELAY=1 Orthanc {pacs.workdir / 'orthanc.json'}")
            if once:
                print("\nresult: OK" if ok else "\nresult: FAILED (see the log above)")
                return 0 if ok else 1
            print("\nrunning: send more studies to the node or from Orthanc's explorer (modality 'ainode'); Ctrl-C stops")
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0
        finally:
            if viewer is not None:
                viewer.stop()
            node.stop()
