"""The node end to end against real peers: Orthanc (PACS, sender and receiver), dcmtk storescu/echoscu
(modality), Medplum's FHIR engine (EHR), with the shipped radiograph-lesion pipeline on the CPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import highdicom as hd
import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]
from pydicom.uid import ExplicitVRLittleEndian

from node.localpeers.fhir import FhirEngine
from node.localpeers.orthanc import Orthanc
from node.results.sr import read_findings
from node.store import Store
from devtools.synthetic.cohort import DemoCase, write_demo_study

from dicom_validation import dciodvfy, errors
from peers import NodeProcess, echoscu, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration



def real_cr_path() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG3_UNCR.dcm")  # bundled in pydicom-data: found on disk, no download
    assert path is not None, "pydicom-data (a test dependency) must provide RG3_UNCR.dcm"
    return Path(path)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[int, DemoCase]:
    root = tmp_path_factory.mktemp("cases")
    return {seed: write_demo_study(root / str(seed), seed=seed) for seed in (7, 11)}


@pytest.fixture(scope="module")
def fhir(cases: dict[int, DemoCase], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirEngine]:
    with FhirEngine() as engine:
        for case in cases.values():
            engine.post_bundle(case.fhir_bundle)
        yield engine


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path / "orthanc") as orthanc:
        yield orthanc


@pytest.fixture()
def node(tmp_path: Path, pacs: Orthanc, fhir: FhirEngine) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path / "node", pacs, fhir.base_url).start()
    yield proc
    proc.stop()


def sr_of(pacs: Orthanc, study_uid: str, timeout: float) -> dict[str, list]:  # type: ignore[type-arg]
    return wait_for(lambda: (r := results_in_orthanc(pacs, study_uid))["SR"] and r, timeout, "an SR in Orthanc")


def test_orthanc_routes_demo_study_and_gets_sr_and_sc(
    node: NodeProcess, pacs: Orthanc, cases: dict[int, DemoCase], tmp_path: Path
) -> None:
    case = cases[7]
    study_ids = {pacs.upload(p)["ParentStudy"] for p in case.files}
    pacs.send_to_modality("ainode", sorted(study_ids))  # what a PACS routing rule does
    found = sr_of(pacs, case.study_instance_uid, timeout=90)
    wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 30, "the study to be 'sent'")
    found = results_in_orthanc(pacs, case.study_instance_uid)
    assert len(found["SR"]) == 1
    sr_file = tmp_path / "sr.dcm"
    sr_file.write_bytes(pacs.instance_file(pacs.find_instance(found["SR"][0].SOPInstanceUID) or ""))
    report = hd.sr.srread(sr_file)
    groups = report.content.get_planar_roi_measurement_groups()
    assert len(groups) >= 1 and all(g.roi is not None for g in groups)
    summary = read_findings(report)
    assert summary.fhir_status == "ok"
    assert "labs" not in summary.inputs_missing and "notes" not in summary.inputs_missing
    assert len(summary.findings) >= 1
    for f in summary.findings:
        assert f.class_meaning and 0.0 <= f.probability <= 1.0
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 and 0 <= y0 < y1
    images_with_findings = {f.sop_instance_uid for f in summary.findings}
    assert len(found["SC"]) == len(images_with_findings) >= 1
    for sc in found["SC"]:
        assert sc.StudyInstanceUID == case.study_instance_uid
        assert sc.SeriesInstanceUID not in {dcmread(p).SeriesInstanceUID for p in case.files}
    # presentation states over the analysed images (one per group of images sharing size, rescale and polarity: the
    # demo's two views may differ), their boxes where the SR's findings are, valid as Orthanc keeps them
    assert 1 <= len(found["PR"]) <= len(summary.images_analysed)
    covered: list[str] = []
    outlines = {}
    for n, gsps in enumerate(found["PR"]):
        gsps_file = tmp_path / f"gsps{n}.dcm"
        gsps_file.write_bytes(pacs.instance_file(pacs.find_instance(gsps.SOPInstanceUID) or ""))
        assert errors(dciodvfy(gsps_file)) == []
        covered += [i.ReferencedSOPInstanceUID for s in gsps.ReferencedSeriesSequence for i in s.ReferencedImageSequence]
        outlines |= {g.TrackingUID: g.GraphicData for a in gsps.GraphicAnnotationSequence
                     for g in a.get("GraphicObjectSequence", [])}
    assert sorted(covered) == sorted(summary.images_analysed), "each analysed image in exactly one presentation state"
    for f in summary.findings:
        x0, y0, x1, y1 = f.box
        assert [float(v) for v in outlines[f.tracking_uid]] == pytest.approx(
            [x0, y0, x1, y0, x1, y1, x0, y1, x0, y0], abs=1e-3)
    # the PACS knew the study: completion came from its instance count, not from the quiet timer
    study = [s for s in node.api_studies() if s["study_uid"] == case.study_instance_uid][0]
    assert "reached the expected" in study["completed_reason"], study["completed_reason"]
    assert study["jobs"][0]["timings"]["inference_s"] > 0


def test_storescu_real_cr_gets_an_sr_within_30_s_saying_it_was_not_analysed(
    node: NodeProcess, pacs: Orthanc, tmp_path: Path
) -> None:
    """A real tibia CR: inside the model's intended use by its header, but unlike the phantoms it was trained on.
    The honest answer is an SR that says so (no finding, no overlay), not boxes."""
    import re

    path = real_cr_path()
    header = dcmread(path, stop_before_pixels=True)
    study_uid = str(header.StudyInstanceUID)
    done = storescu(node.port, [path])
    assert done.returncode == 0, done.stderr
    t0 = time.monotonic()
    found = sr_of(pacs, study_uid, timeout=30)
    assert time.monotonic() - t0 <= 30
    summary = read_findings(found["SR"][0])
    assert not summary.analysed and not summary.nothing_found and summary.findings == ()
    (excluded,) = summary.instances_excluded
    assert (excluded.sop_instance_uid, excluded.reason) == (str(header.SOPInstanceUID), "out-of-distribution")
    assert re.fullmatch(r"feature distance [\d.]+ > threshold [\d.]+ \(the 99\.5th percentile of the validation "
                        r"images of datalist synthetic-bone-seed0\)", excluded.detail), excluded.detail
    wait_for(lambda: node.study_status(study_uid) == "sent", 30, "the study settled")
    found = results_in_orthanc(pacs, study_uid)
    assert found["SC"] == [] and found["PR"] == [], "nothing to draw on an image that was not analysed"


def test_garbage_and_truncated_payloads_fail_and_node_keeps_serving(
    node: NodeProcess, pacs: Orthanc, cases: dict[int, DemoCase], tmp_path: Path
) -> None:
    body = cases[7].files[0].read_bytes()
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(body[: body.index(b"\x08\x00\x16\x00")] + b"not a dicom dataset at all " * 40)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(body[: len(body) // 2])
    for bad in (garbage, truncated):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
        assert assoc.is_established
        _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes go on the wire as they are
        try:
            status = assoc.send_c_store(bad)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
            assoc.release()
        assert 0xC000 <= int(status.Status) <= 0xCFFF, f"{bad.name}: 0x{int(status.Status):04X}"
        assert echoscu(node.port).returncode == 0, "the node stopped serving after a bad payload"
    ok = storescu(node.port, [cases[7].files[0]])
    assert ok.returncode == 0, ok.stderr
    assert node.proc is not None and node.proc.poll() is None


def test_fhir_down_gives_image_only_results_that_say_so(
    tmp_path: Path, pacs: Orthanc, cases: dict[int, DemoCase]
) -> None:
    with FhirEngine() as stopped:
        url = stopped.base_url
    node = NodeProcess(tmp_path / "node-nofhir", pacs, url).start()
    try:
        case = cases[7]
        assert storescu(node.port, case.files).returncode == 0
        found = sr_of(pacs, case.study_instance_uid, timeout=60)
        summary = read_findings(found["SR"][0])
        assert summary.fhir_status == "unreachable"
        assert {"labs", "notes"} <= set(summary.inputs_missing)
        for f in summary.findings:
            assert {"labs", "notes"} <= set(f.inputs_missing)
    finally:
        node.stop()


def test_kill_9_after_storescu_then_restart_delivers_exactly_once(
    tmp_path: Path, pacs: Orthanc, fhir: FhirEngine, cases: dict[int, DemoCase]
) -> None:
    case = cases[11]
    node = NodeProcess(tmp_path / "node-kill", pacs, fhir.base_url, quiet_seconds=2.0).start()
    sent = storescu(node.port, case.files)
    assert sent.returncode == 0, sent.stderr
    node.kill9()
    # everything acknowledged is on disk and in the database
    store = Store(node.workdir / "data" / "node.db")
    assert len(store.study_instances(case.study_instance_uid)) == len(case.files)
    store.close()
    assert results_in_orthanc(pacs, case.study_instance_uid)["SR"] == []

    node.start()
    try:
        wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 90, "the study to be sent")
        found = results_in_orthanc(pacs, case.study_instance_uid)
        assert len(found["SR"]) == 1
        summary = read_findings(found["SR"][0])
        assert len(found["SC"]) == len({f.sop_instance_uid for f in summary.findings})
        store = Store(node.workdir / "data" / "node.db")
        jobs = store.jobs(case.study_instance_uid)
        assert len(jobs) == 1 and jobs[0]["state"] == "sent"
        assert all(i["state"] == "sent" for i in store.outbox_items())
        store.close()
        # a second kill after delivery and a restart sends nothing more
        node.kill9()
        node.start()
        time.sleep(3)
        again = results_in_orthanc(pacs, case.study_instance_uid)
        assert len(again["SR"]) == 1 and len(again["SC"]) == len(found["SC"])
        instances = [i for i in pacs.study_instances(case.study_instance_uid)]
        assert len({i["SOPInstanceUID"] for i in instances}) == len(instances)
    finally:
        node.stop()


def test_status_endpoints_and_command(node: NodeProcess, cases: dict[int, DemoCase]) -> None:
    import subprocess
    import sys

    import httpx

    assert storescu(node.port, cases[11].files[:1]).returncode == 0
    wait_for(lambda: node.study_status(cases[11].study_instance_uid) is not None, 10, "the study in /api/studies")
    health = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz").json()
    assert health["ok"] is True
    metrics = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", headers=node.api_headers()).text
    assert 'ainode_instances 1.0' in metrics
    out = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config", str(node.config), "--json"],
                         capture_output=True, text=True, check=True)
    status = json.loads(out.stdout)
    assert status["counts"]["instances"]["total"] == 1
    assert "SYN-" not in out.stdout, "patient identifiers leak into the status output"


def test_jpeg2000_radiograph_is_stored_compressed_and_analysed(node: NodeProcess, pacs: Orthanc,
                                                                tmp_path: Path) -> None:
    from node_fakes import phantom_cr, write_cr

    path = write_cr(tmp_path / "j2k.dcm", phantom_cr("e2e-j2k", 1, compressed=True))  # JPEG 2000 lossless
    source = dcmread(path, stop_before_pixels=True)
    sent = storescu(node.port, [path], options=("-xv",))  # -xv: propose JPEG 2000 lossless, as such a modality does
    assert sent.returncode == 0, sent.stderr
    found = sr_of(pacs, str(source.StudyInstanceUID), timeout=60)
    summary = read_findings(found["SR"][0])
    assert str(source.SOPInstanceUID) in summary.images_analysed
    store = Store(node.workdir / "data" / "node.db")
    row = store.study_instances(str(source.StudyInstanceUID))[0]
    store.close()
    assert row["transfer_syntax"] == str(source.file_meta.TransferSyntaxUID), "the node re-encoded what it received"


def test_a_real_chest_cr_is_stored_and_routed_nowhere(node: NodeProcess, pacs: Orthanc) -> None:
    from pydicom.data import get_testdata_file

    found_path = get_testdata_file("RG1_J2KR.dcm")  # a real chest CR, JPEG 2000 lossless, from pydicom-data
    assert found_path is not None
    source = dcmread(found_path, stop_before_pixels=True)
    assert source.BodyPartExamined == "CHEST"
    sent = storescu(node.port, [Path(found_path)], options=("-xv",))
    assert sent.returncode == 0, sent.stderr
    # the bone model's intended use is limb radiographs: with no [[route]] configured, nothing takes a chest CR
    wait_for(lambda: node.study_status(str(source.StudyInstanceUID)) == "no-pipeline", 30, "'no-pipeline'")
    assert results_in_orthanc(pacs, str(source.StudyInstanceUID)) == {"SR": [], "SC": [], "KO": [], "PR": []}
    store = Store(node.workdir / "data" / "node.db")
    row = store.study_instances(str(source.StudyInstanceUID))[0]
    store.close()
    assert row["transfer_syntax"] == str(source.file_meta.TransferSyntaxUID), "the node re-encoded what it received"


def test_results_wait_in_the_outbox_while_the_pacs_is_down_and_survive_a_restart(
    tmp_path: Path, fhir: FhirEngine, cases: dict[int, DemoCase]
) -> None:
    pacs = Orthanc(workdir=tmp_path / "orthanc-later")  # its ports are chosen now; it is started later
    case = cases[11]
    node = NodeProcess(tmp_path / "node-outbox", pacs, fhir.base_url, register=False).start()
    try:
        assert storescu(node.port, case.files).returncode == 0
        db = node.workdir / "data" / "node.db"

        def failed_once() -> bool:
            store = Store(db)
            try:
                items = store.outbox_items()
                return bool(items) and all(i["state"] == "pending" and i["attempts"] >= 1 for i in items)
            finally:
                store.close()

        wait_for(failed_once, 60, "a failed delivery attempt while the PACS is down")
        node.stop()
        pacs.start()
        node.start()
        wait_for(lambda: node.study_status(case.study_instance_uid) == "sent", 90, "delivery after the restart")
        found = results_in_orthanc(pacs, case.study_instance_uid)
        assert len(found["SR"]) == 1 and len(found["SC"]) >= 1
    finally:
        node.stop()
        pacs.stop()
