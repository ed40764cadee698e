"""The study lifecycle against real peers: Orthanc (the PACS: instance counts, results, re-sending the study) and
dcmtk storescu (the modality). The node's service runs in-process with a fast deterministic pipeline (a box on
the bright square every synthetic CR has), so that a run can be held open while an instance arrives.

What a radiology IT team checks: late instances give one amended SR, not one per instance; an instance that
arrives during a run is analysed; what no pipeline reads, and the node's own results coming back, re-run nothing;
nothing is ever left stuck.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from node.localpeers.orthanc import Orthanc
from node.results.sr import SrSummary, read_findings
from pipelines.base import ClinicalContext, PipelineResult, StudyInput

from node_fakes import FakePipeline, cr_dataset, write_cr
from peers import InProcessNode, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration


class GatedPipeline(FakePipeline):
    """Holds each run until the test opens the gate (open by default)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        self.started.set()
        if not self.gate.wait(60):
            raise RuntimeError("the test never opened the gate")
        return super().run(study, context)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture()
def pipeline() -> GatedPipeline:
    return GatedPipeline()


@pytest.fixture()
def node(tmp_path: Path, pacs: Orthanc, pipeline: GatedPipeline) -> Iterator[InProcessNode]:
    proc = InProcessNode(tmp_path / "node", pacs, pipeline, quiet_seconds=2.0).start()
    yield proc
    proc.stop()


def make_study(root: Path, n: int, modality: str = "CR", start: int = 1) -> tuple[str, list[Path]]:
    """``n`` synthetic instances of a new study, written as files for storescu."""
    name = f"study-{uuid.uuid4()}"
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(start, start + n):
        ds = cr_dataset(name, k, modality=modality)
        files.append(write_cr(root / f"{name}-{k}.dcm", ds))
    return str(cr_dataset(name, 1).StudyInstanceUID), files


def more_of(study_file: Path, k: int, modality: str = "CR") -> Path:
    """Instance ``k`` of the same study as ``study_file``."""
    name = study_file.name.rsplit("-", 1)[0]
    return write_cr(study_file.parent / f"{name}-{k}{modality}.dcm", cr_dataset(name, k, modality=modality))


def send(node: InProcessNode, files: list[Path]) -> None:
    done = storescu(node.port, files)
    assert done.returncode == 0, done.stderr


def sop_uids(files: list[Path]) -> set[str]:
    from pydicom import dcmread

    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def srs_in_orthanc(pacs: Orthanc, study_uid: str) -> tuple[SrSummary | None, list[SrSummary]]:
    """(the current SR, all of our SRs): current = the one no other SR of ours names as its predecessor."""
    summaries = [read_findings(ds) for ds in results_in_orthanc(pacs, study_uid)["SR"]]
    replaced = {p for s in summaries for p in s.predecessors}
    current = [s for s in summaries if s.sop_instance_uid not in replaced]
    assert len(current) <= 1, f"{len(current)} current SRs in the PACS: duplicates"
    return (current[0] if current else None), summaries


def settle(node: InProcessNode, study_uid: str, timeout: float = 60) -> None:
    wait_for(lambda: node.settled(study_uid), timeout, "the study to settle (final state, nothing pending)")


def test_two_associations_5_s_apart_give_one_current_sr_covering_both(
    node: InProcessNode, pacs: Orthanc, tmp_path: Path
) -> None:
    study_uid, files = make_study(tmp_path / "in", 2)
    send(node, files[:1])
    time.sleep(5)
    send(node, files[1:])
    settle(node, study_uid)
    current, all_srs = srs_in_orthanc(pacs, study_uid)
    assert current is not None and set(current.images_analysed) == sop_uids(files)
    superseded = [s for s in all_srs if s is not current]
    assert len(superseded) <= 1
    if superseded:
        assert current.predecessors == (superseded[0].sop_instance_uid,) and current.amended
        # the superseded SR, its overlay and its presentation state are named by a rejection note in the study
        notes = results_in_orthanc(pacs, study_uid)["KO"]
        assert len(notes) == 1
        listed = {i.ReferencedSOPInstanceUID for s in notes[0].CurrentRequestedProcedureEvidenceSequence
                  for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert superseded[0].sop_instance_uid in listed and len(listed) == 3  # the old SR, its overlay, its GSPS
    print(f"two associations 5 s apart: {len(all_srs)} SR(s) in Orthanc, current covers {len(files)} images")


def test_three_late_instances_trickling_in_give_one_rerun(
    node: InProcessNode, pacs: Orthanc, pipeline: GatedPipeline, tmp_path: Path
) -> None:
    study_uid, files = make_study(tmp_path / "in", 1)
    send(node, files)
    settle(node, study_uid)
    runs_before = pipeline.runs
    late = [more_of(files[0], k) for k in (2, 3, 4)]
    for path in late:  # each on its own association, 0.5 s apart: well inside the 2 s quiet period
        send(node, [path])
        time.sleep(0.5)
    settle(node, study_uid)
    assert pipeline.runs - runs_before == 1, "a trickle of late instances must give one re-run"
    current, all_srs = srs_in_orthanc(pacs, study_uid)
    assert current is not None and set(current.images_analysed) == sop_uids(files + late)
    assert len(all_srs) == 2 and current.amended
    study = node.study(study_uid)
    assert study is not None and study["reopen_count"] == 1 and "late instance" in study["reopen_reason"]


def test_an_instance_arriving_while_the_job_runs_is_analysed(
    node: InProcessNode, pacs: Orthanc, pipeline: GatedPipeline, tmp_path: Path
) -> None:
    study_uid, files = make_study(tmp_path / "in", 1)
    pipeline.gate.clear()
    send(node, files)
    assert pipeline.started.wait(30), "the first run never started"
    late = more_of(files[0], 2)
    send(node, [late])  # the run is held open: this arrives during it
    # the re-opened study completes again while the first run still holds the job
    wait_for(lambda: (node.study(study_uid) or {}).get("state") == "processing", 30, "completion again")
    pipeline.gate.set()
    settle(node, study_uid)
    current, all_srs = srs_in_orthanc(pacs, study_uid)
    assert current is not None and set(current.images_analysed) == sop_uids(files + [late])
    assert len(all_srs) == 1, "the outdated first run must not be sent"
    store = node.store()
    runs = store.runs(f"{study_uid}/{pipeline.name}")
    store.close()
    assert [r["state"] for r in runs] == ["superseded", "sent"]


def test_a_non_routed_instance_after_the_results_reruns_nothing(
    node: InProcessNode, pacs: Orthanc, pipeline: GatedPipeline, tmp_path: Path
) -> None:
    study_uid, files = make_study(tmp_path / "in", 1)
    send(node, files)
    settle(node, study_uid)
    runs_before = pipeline.runs
    send(node, [more_of(files[0], 2, modality="MR")])
    time.sleep(3.5)  # past the quiet period: a re-open would have completed by now
    study = node.study(study_uid)
    assert study is not None and study["state"] == "sent" and study["instance_count"] == 2
    assert pipeline.runs == runs_before
    assert len(results_in_orthanc(pacs, study_uid)["SR"]) == 1
    store = node.store()
    assert "late-instance-not-routed" in [e["event"] for e in store.events(study_uid)]
    store.close()


def test_pacs_resending_the_study_with_our_results_reruns_and_sends_nothing(
    tmp_path: Path, pacs: Orthanc, pipeline: GatedPipeline
) -> None:
    # quiet 30 s: completion must come from Orthanc's count, first time and after the re-open
    node = InProcessNode(tmp_path / "node", pacs, pipeline, quiet_seconds=30.0).start()
    try:
        study_uid, files = make_study(tmp_path / "in", 2)
        ids = {pacs.upload(p)["ParentStudy"] for p in files}
        pacs.send_to_modality("ainode", sorted(ids))
        settle(node, study_uid, timeout=30)
        first = node.study(study_uid)
        assert first is not None and "reached the expected 2" in first["completed_reason"]
        in_pacs = {i["SOPInstanceUID"] for i in pacs.study_instances(study_uid)}
        assert len(in_pacs) == 6  # 2 images, our SR, an SC overlay per image, one GSPS over both
        runs_before = pipeline.runs

        pacs.send_to_modality("ainode", sorted(ids))  # the whole study again, our SR, SCs and GSPS included
        time.sleep(3)
        study = node.study(study_uid)
        assert study is not None and study["state"] == "sent" and study["reopen_count"] == 0
        assert pipeline.runs == runs_before and node.settled(study_uid)
        assert {i["SOPInstanceUID"] for i in pacs.study_instances(study_uid)} == in_pacs, "something new was sent"
        store = node.store()
        assert store.study_instances(study_uid, role="own-result") == [], "own results are ignored by default"
        store.close()

        # a late image through the PACS: re-opened, Orthanc asked again without our own series, one amendment
        late = more_of(files[0], 3)
        pacs.send_to_modality("ainode", [pacs.upload(late)["ID"]])
        wait_for(lambda: (node.study(study_uid) or {}).get("reopen_count") == 1, 10, "the re-open")
        settle(node, study_uid, timeout=30)
        study = node.study(study_uid)
        assert study is not None and "reached the expected 3" in study["completed_reason"]
        current, all_srs = srs_in_orthanc(pacs, study_uid)
        assert current is not None and set(current.images_analysed) == sop_uids(files + [late])
        assert len(all_srs) == 2
    finally:
        node.stop()


def test_own_results_stored_when_configured_never_count(tmp_path: Path, pacs: Orthanc, pipeline: GatedPipeline) -> None:
    node = InProcessNode(tmp_path / "node", pacs, pipeline, extra={"ingest": {"own_results": "store"}}).start()
    try:
        study_uid, files = make_study(tmp_path / "in", 1)
        ids = {pacs.upload(p)["ParentStudy"] for p in files}
        pacs.send_to_modality("ainode", sorted(ids))
        settle(node, study_uid)
        pacs.send_to_modality("ainode", sorted(ids))
        store = node.store()
        wait_for(lambda: len(store.study_instances(study_uid, role="own-result")) == 3, 10,
                 "own results stored (SR, SC, GSPS)")
        study = store.study(study_uid)
        assert study is not None and study["instance_count"] == 1 and study["state"] == "sent"
        store.close()
    finally:
        node.stop()


def test_reprocess_with_unchanged_inputs_sends_nothing_new(
    node: InProcessNode, pacs: Orthanc, pipeline: GatedPipeline, tmp_path: Path
) -> None:
    study_uid, files = make_study(tmp_path / "in", 1)
    send(node, files)
    settle(node, study_uid)
    before = {i["SOPInstanceUID"] for i in pacs.study_instances(study_uid)}
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{node.settings.node.data_dir}"\n'
                      f'[[route]]\npipeline = "{pipeline.name}"\nModality = "^CR$"\n')
    out = subprocess.run([sys.executable, "-m", "node.cli", "reprocess", study_uid, "--config", str(config)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: len(node.store().runs(f"{study_uid}/{pipeline.name}")) == 2, 20, "the forced re-run")
    settle(node, study_uid)
    store = node.store()
    runs = store.runs(f"{study_uid}/{pipeline.name}")
    store.close()
    assert [r["state"] for r in runs] == ["sent", "unchanged"]
    assert {i["SOPInstanceUID"] for i in pacs.study_instances(study_uid)} == before
