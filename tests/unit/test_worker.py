"""Worker: a claimed job becomes an SR + SCs + a GSPS on disk and outbox items, with timings; a replay after a crash
yields byte-identical UIDs (so the PACS keeps one copy); a failing pipeline is retried, then failed; a pipeline past
its budget fails with "deadline exceeded" and the worker takes the next job; an EHR past its budget gives image-only
results coded "timeout"; an undecodable input is left out with its reason and the rest is analysed.
"""

from __future__ import annotations

import highdicom as hd

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import Dataset, dcmread

from node.results import coding
from node.config import RouteRule
from node.results.sr import read_findings
from node.store import IndexedInstance, JobPlan, Store
from node.worker import MAX_ATTEMPTS, Worker
from pipelines.base import ClinicalContext, ExcludedInstance, PipelineResult, StudyInput

from node_fakes import FakePipeline, cr_dataset, j2k_cr, settings, write_cr
from test_results_common import dciodvfy, errors


def received(tmp_path: Path, n_images: int = 2, with_pacs: bool = True, more: tuple[Dataset, ...] = (),
             study: str = "study-w", **sections: dict[str, Any]) -> tuple[Store, Any, str]:
    extra = {"pacs": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}} if with_pacs else {}
    s = settings(tmp_path, **extra, **sections)
    s = s.__class__(**{**s.__dict__, "routes": (RouteRule("fake-bright", {"Modality": "^CR$"}),)})
    store = Store(s.node.data_dir / "node.db")
    study_uid = ""
    sops = []
    for n, ds in enumerate([cr_dataset(study, k) for k in range(1, n_images + 1)] + list(more), start=1):
        sops.append(str(ds.SOPInstanceUID))
        study_uid = str(ds.StudyInstanceUID)
        path = write_cr(tmp_path / f"{study}-{n}.dcm", ds)
        store.index_instance(IndexedInstance(
            sop_instance_uid=str(ds.SOPInstanceUID), study_uid=study_uid, series_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID), modality="CR", body_part="FEMUR", series_description="FEMUR AP",
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID), path=str(path), size=path.stat().st_size,
            calling_ae="SCU", patient_id="SYN-0001", patient_age=55.0, patient_sex="F", study_date="20260110",
            digest=f"content-{n}", routed_to=("fake-bright",),
        ))
    store.complete_study(study_uid, "test", [JobPlan("fake-bright", "1.0", tuple(sops))])
    return store, s, study_uid


def test_job_writes_sr_sc_and_gsps_and_queues_them(tmp_path: Path) -> None:
    store, s, study_uid = received(tmp_path)
    pipeline = FakePipeline()
    worker = Worker(store, s, lambda name: pipeline, owner="w")  # type: ignore[arg-type]
    assert worker.run_once()
    assert not worker.run_once(), "the queue should be empty"
    job = store.jobs(study_uid)[0]
    assert job["state"] == "sending" and job["n_findings"] == 2 and job["fhir_status"] == "unreachable"
    assert set(json.loads(job["timings"])) >= {"fhir_s", "inference_s", "results_s", "total_s"}
    items = store.outbox_items()
    assert [i["state"] for i in items] == ["pending"] * 4
    by_modality: dict[str, list[Dataset]] = {}
    for item in items:
        ds = dcmread(item["path"])
        by_modality.setdefault(str(ds.Modality), []).append(ds)
    assert {m: len(v) for m, v in by_modality.items()} == {"SR": 1, "OT": 2, "PR": 1}
    sr = by_modality["SR"][0]
    summary = read_findings(sr)
    assert len(summary.findings) == 2 and {"labs", "notes"} <= set(summary.inputs_missing)
    assert sr.StudyInstanceUID == study_uid
    # the finding site comes from the images' Body Part Examined (FEMUR), not the pipeline's fallback
    assert {f.finding_site.meaning for f in summary.findings if f.finding_site} == {"Femur"}
    assert all(Path(i["path"]).with_suffix(".png").exists() for i in items if "sc-" in Path(i["path"]).name)
    # one presentation state over both analysed images, each with its finding's box
    (gsps,) = by_modality["PR"]
    gsps_path = [Path(i["path"]) for i in items if dcmread(i["path"]).Modality == "PR"][0]
    assert gsps_path.name == "gsps.dcm" and errors(dciodvfy(gsps_path)) == []
    assert gsps.StudyInstanceUID == study_uid and gsps.SeriesNumber == 9904
    annotated = {a.ReferencedImageSequence[0].ReferencedSOPInstanceUID for a in gsps.GraphicAnnotationSequence
                 if "GraphicObjectSequence" in a}
    assert annotated == set(summary.images_analysed) == {f.sop_instance_uid for f in summary.findings}


def test_replay_after_crash_reuses_every_uid(tmp_path: Path) -> None:
    store, s, study_uid = received(tmp_path)
    worker = Worker(store, s, lambda name: FakePipeline(), owner="w1")  # type: ignore[arg-type]
    worker.run_once()
    first = sorted(r["sop_instance_uid"] for r in store.db.query("SELECT * FROM results"))
    # the worker died after writing its results, before recording them: the job is processed again from scratch
    store.db.execute("DELETE FROM outbox")
    store.db.execute("UPDATE jobs SET state = 'running', lease_until = 0, current_run_id = NULL")
    Worker(store, s, lambda name: FakePipeline(), owner="w2").run_once()  # type: ignore[arg-type]
    second = sorted(r["sop_instance_uid"] for r in store.db.query("SELECT * FROM results"))
    assert first == second and len(first) == 4
    assert len(store.outbox_items()) == 4


def test_without_pacs_results_stay_local_and_job_is_done(tmp_path: Path) -> None:
    store, s, study_uid = received(tmp_path, n_images=1, with_pacs=False)
    Worker(store, s, lambda name: FakePipeline(), owner="w").run_once()  # type: ignore[arg-type]
    assert store.jobs(study_uid)[0]["state"] == "sent"
    assert store.outbox_items() == []


class Broken(FakePipeline):
    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        raise RuntimeError("CUDA out of memory")


def test_failing_pipeline_is_retried_then_failed(tmp_path: Path) -> None:
    store, s, study_uid = received(tmp_path, n_images=1)
    worker = Worker(store, s, lambda name: Broken(), owner="w")  # type: ignore[arg-type]
    for _ in range(MAX_ATTEMPTS):
        assert worker.run_once()
    job = store.jobs(study_uid)[0]
    assert job["state"] == "failed" and "out of memory" in job["error"]
    assert store.study(study_uid)["state"] == "failed"  # type: ignore[index]
    assert not worker.run_once()


@pytest.mark.parametrize("n_images", [1])
def test_nothing_found_gives_sr_and_gsps_without_sc(tmp_path: Path, n_images: int) -> None:
    class Blind(FakePipeline):
        def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
            r = super().run(study, context)
            return PipelineResult(**{**r.__dict__, "findings": ()})

    store, s, study_uid = received(tmp_path, n_images=n_images)
    Worker(store, s, lambda name: Blind(), owner="w").run_once()  # type: ignore[arg-type]
    items = store.outbox_items()
    by_modality = {str(dcmread(i["path"]).Modality): dcmread(i["path"]) for i in items}
    assert len(items) == 2 and set(by_modality) == {"SR", "PR"}
    summary = read_findings(by_modality["SR"])
    assert summary.nothing_found and summary.findings == ()
    texts = [t.UnformattedTextValue for a in by_modality["PR"].GraphicAnnotationSequence for t in a.TextObjectSequence]
    assert "AI: no lesion found" in texts


def test_changed_inputs_give_an_amending_sr_and_unchanged_ones_send_nothing(tmp_path: Path) -> None:
    store, s, study_uid = received(tmp_path, n_images=1)
    pipeline = FakePipeline()
    worker = Worker(store, s, lambda name: pipeline, owner="w")  # type: ignore[arg-type]
    worker.run_once()
    first_sr = store.jobs(study_uid)[0]["sr_sop_uid"]
    for item in store.due_outbox():
        store.outbox_sent(item["item_id"])
    # the same study and inputs, forced (reprocess): the pipeline is not even run, nothing new is queued
    store.request_processing(study_uid, reprocess="*")
    sop = store.study_instances(study_uid)[0]["sop_instance_uid"]
    assert store.complete_study(study_uid, "test", [JobPlan("fake-bright", "1.0", (sop,), force=True)])
    runs_before = pipeline.runs
    worker.run_once()
    assert pipeline.runs == runs_before and len(store.outbox_items()) == 3
    assert store.jobs(study_uid)[0]["state"] == "sent"
    # new content under the same UID (policy replace): inputs changed, the new SR amends the first
    store.db.execute("UPDATE instances SET digest = 'replaced'")
    store.request_processing(study_uid)
    assert store.complete_study(study_uid, "test", [JobPlan("fake-bright", "1.0", (sop,), force=True)])
    worker.run_once()
    job = store.jobs(study_uid)[0]
    assert job["sr_sop_uid"] != first_sr and job["state"] == "sending"
    sr = dcmread([r["path"] for r in store.results_of_run(job["current_run_id"]) if r["kind"] == "sr"][0])
    summary = read_findings(sr)
    assert summary.amended and summary.predecessors == (first_sr,)
    assert "amended" in sr.SeriesDescription
    states = [r["state"] for r in store.runs(job["job_id"])]
    assert states == ["superseded", "unchanged", "sending"]
    # the superseded SR, overlay and presentation state are listed in an IOCM rejection note sent with the amendment
    first_run = store.runs(job["job_id"])[0]["run_id"]
    old = {r["sop_instance_uid"] for r in store.results_of_run(first_run)}
    ko_path = [r["path"] for r in store.results_of_run(job["current_run_id"]) if r["kind"] == "ko"][0]
    ko = dcmread(ko_path)
    listed = {i.ReferencedSOPInstanceUID for s in ko.CurrentRequestedProcedureEvidenceSequence
              for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert listed == old and len(old) == 3
    assert {r["kind"] for r in store.results_of_run(first_run)} == {"sr", "sc", "gsps"}
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    from test_results_common import dciodvfy, errors
    assert errors(dciodvfy(Path(ko_path))) == []


def test_research_export_is_deidentified_consistently_and_audited(tmp_path: Path) -> None:
    from node.export import export_study

    store, s, study_uid = received(tmp_path)
    Worker(store, s, lambda name: FakePipeline(), owner="w").run_once()  # type: ignore[arg-type]
    out = tmp_path / "export"
    summary = export_study(store, study_uid, out, seed="test")
    assert summary.instances == 2 and summary.results == 4
    files = sorted(out.glob("*.dcm"))
    for path in files:
        raw = path.read_bytes()
        assert b"SYN-0001" not in raw and b"Synthetic^Patient" not in raw and study_uid.encode() not in raw
    exported = [dcmread(p) for p in files]
    images = {str(ds.SOPInstanceUID) for ds in exported if ds.Modality == "CR"}
    sr = [ds for ds in exported if ds.Modality == "SR"][0]
    summary_sr = read_findings(sr)
    assert set(summary_sr.images_analysed) == images, "the exported SR no longer points at the exported images"
    assert {f.sop_instance_uid for f in summary_sr.findings} <= images
    assert store.audit_records(kind="research-export")[0]["outcome"] == "de-identified"
    with pytest.raises(FileExistsError):
        export_study(store, study_uid, out)


class Decoding(FakePipeline):
    """Decodes every image it reads, as a real model must (FakePipeline reads headers only)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        self.calls += 1
        for ref in study.instances:
            dcmread(ref.path).pixel_array
        return super().run(study, context)


def sr_of(store: Store, study_uid: str) -> Path:
    job = store.jobs(study_uid)[0]
    return Path([r["path"] for r in store.results_of_run(job["current_run_id"]) if r["kind"] == "sr"][0])


def test_an_undecodable_instance_is_left_out_and_the_rest_analysed(tmp_path: Path) -> None:
    bad = j2k_cr("study-w", 9, "garbled")
    store, s, study_uid = received(tmp_path, n_images=2, more=(j2k_cr("study-w", 8), bad))
    pipeline = Decoding()
    Worker(store, s, lambda name: pipeline, owner="w").run_once()  # type: ignore[arg-type]
    job = store.jobs(study_uid)[0]
    assert job["state"] == "sending" and job["n_findings"] == 3 and pipeline.calls == 2
    path = sr_of(store, study_uid)
    summary = read_findings(dcmread(path))
    assert len(summary.images_analysed) == 3 and str(bad.SOPInstanceUID) not in summary.images_analysed
    (excluded,) = summary.instances_excluded
    assert (excluded.sop_instance_uid, excluded.reason) == (str(bad.SOPInstanceUID), "undecodable")
    assert "J2K" in excluded.detail
    assert errors(dciodvfy(path)) == []
    run = store.run(job["current_run_id"])
    assert run is not None and f"not analysed: 1 instance(s): {bad.SOPInstanceUID} undecodable" in run["detail"]
    # the SR, an overlay per analysed image, and a GSPS per image size: the 1760x1760 J2K CR cannot share one
    # presentation state (one displayed area) with the 64x64 ones
    items = store.outbox_items()
    assert len(items) == 6
    states = sorted(Path(i["path"]).name for i in items if Path(i["path"]).name.startswith("gsps"))
    assert states == ["gsps-2.dcm", "gsps.dcm"]
    covered = [{r.ReferencedSOPInstanceUID for series in dcmread(path.parent / name).ReferencedSeriesSequence
                for r in series.ReferencedImageSequence} for name in states]
    assert sorted(map(len, covered)) == [1, 2] and set().union(*covered) == set(summary.images_analysed)


def test_an_unreadable_instance_is_named_by_its_indexed_uids(tmp_path: Path) -> None:
    store, s, study_uid = received(tmp_path, n_images=2)
    gone = store.study_instances(study_uid)[1]
    Path(gone["path"]).unlink()
    Worker(store, s, lambda name: Decoding(), owner="w").run_once()  # type: ignore[arg-type]
    path = sr_of(store, study_uid)
    (excluded,) = read_findings(dcmread(path)).instances_excluded
    assert (excluded.sop_instance_uid, excluded.reason) == (gone["sop_instance_uid"], "unreadable")
    assert errors(dciodvfy(path)) == []


def test_reasons_a_pipeline_reports_itself_reach_the_sr(tmp_path: Path) -> None:
    class Reporting(FakePipeline):
        def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
            first, rest = study.instances[0], study.instances[1:]
            r = super().run(StudyInput(study.study_instance_uid, rest), context)
            why = ExcludedInstance(first.sop_instance_uid, "undecodable", "ValueError: bad frame")
            return PipelineResult(**{**r.__dict__, "instances_excluded": (why,)})

    store, s, study_uid = received(tmp_path, n_images=2)
    Worker(store, s, lambda name: Reporting(), owner="w").run_once()  # type: ignore[arg-type]
    summary = read_findings(dcmread(sr_of(store, study_uid)))
    assert [e.detail for e in summary.instances_excluded] == ["ValueError: bad frame"]
    assert len(summary.images_analysed) == 1


def test_nothing_decodable_gives_an_sr_that_says_not_evaluated_and_why(tmp_path: Path) -> None:
    from dicom_validation import assert_valid

    store, s, study_uid = received(tmp_path, n_images=0, more=(j2k_cr("study-w", 1, "garbled"),))
    worker = Worker(store, s, lambda name: Decoding(), owner="w")  # type: ignore[arg-type]
    assert worker.run_once()
    job = store.jobs(study_uid)[0]
    assert job["state"] == "sending" and job["attempts"] == 1, "done: a retry would decode no better"
    kinds = [r["kind"] for r in store.results_of_run(job["current_run_id"])]
    assert kinds == ["sr"], "no overlay and no presentation state: there is no analysed image to annotate"
    path = sr_of(store, study_uid)
    summary = read_findings(dcmread(path))
    assert not summary.analysed and not summary.nothing_found and summary.findings == ()
    assert summary.detection_threshold is None, "the pipeline never ran"
    assert [e.reason for e in summary.instances_excluded] == ["undecodable"]
    presence = hd.sr.utils.find_content_items(dcmread(path), name=coding.PRESENCE, recursive=True)
    assert presence[0].ConceptCodeSequence[0].CodeMeaning == "Not Evaluated"
    assert_valid(path)
    assert not worker.run_once()


class Hanging(FakePipeline):
    """Blocks until released: a model stuck in a driver call, say."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        self.release.wait(30)
        return super().run(study, context)


def test_a_pipeline_past_its_budget_fails_the_run_and_the_next_job_runs(tmp_path: Path) -> None:
    store, s, first = received(tmp_path, n_images=1, study="slow", budgets={"pipeline_seconds": 0.5})
    second = received(tmp_path, n_images=1, study="next")[2]
    hanging, quick = Hanging(), FakePipeline()
    pipelines = iter([hanging, quick])
    worker = Worker(store, s, lambda name: next(pipelines), owner="w")  # type: ignore[arg-type]
    started = time.monotonic()
    assert worker.run_once()
    took = time.monotonic() - started
    job = store.jobs(first)[0]
    assert job["state"] == "failed" and job["attempts"] == 1, job
    assert job["error"].startswith("deadline exceeded: pipeline fake-bright ran longer than the budget of 0.5 s")
    assert store.runs(job["job_id"])[0]["state"] == "failed"
    assert 0.5 <= took < 1.5, took
    assert worker.abandoned_runs() and worker.abandoned_runs()[0].startswith("pipeline fake-bright")
    assert worker.run_once()  # the queue moves on while the abandoned run still hangs
    assert store.jobs(second)[0]["state"] == "sending"
    hanging.release.set()
    deadline = time.monotonic() + 5
    while worker.abandoned_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.abandoned_runs() == []
    assert store.jobs(first)[0]["state"] == "failed", "a late finish of an abandoned run changes nothing"


def test_an_ehr_past_its_budget_gives_image_only_results_coded_timeout(tmp_path: Path) -> None:
    def trickle(request: httpx.Request) -> httpx.Response:
        def body() -> Any:
            for byte in b'{"resourceType": "Bundle", "type": "searchset"}':
                time.sleep(0.2)
                yield bytes([byte])
        return httpx.Response(200, content=body())

    fhir = {"base_url": "http://ehr.test/fhir/R4", "timeout_seconds": 1.0}
    store, s, study_uid = received(tmp_path, n_images=1, fhir=fhir, budgets={"fhir_seconds": 0.6})
    client = httpx.Client(transport=httpx.MockTransport(trickle))
    started = time.monotonic()
    Worker(store, s, lambda name: FakePipeline(), owner="w", fhir_client=client).run_once()  # type: ignore[arg-type]
    assert time.monotonic() - started < 3
    job = store.jobs(study_uid)[0]
    assert job["state"] == "sending" and job["fhir_status"] == "timeout"
    summary = read_findings(dcmread(sr_of(store, study_uid)))
    assert summary.fhir_status == "timeout" and {"labs", "notes"} <= set(summary.inputs_missing)


def test_a_result_write_that_fails_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.worker import _write_dataset

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("node.worker.os.fsync", disk_full)
    with pytest.raises(OSError):
        _write_dataset(cr_dataset("w", 1), tmp_path / "out" / "sr.dcm")
    assert list((tmp_path / "out").iterdir()) == []


def test_sources_with_invalid_attributes_still_give_valid_results(tmp_path: Path) -> None:
    import warnings

    from test_results_common import INVALID_ATTRIBUTES

    bad = []
    for n in (1, 2):
        ds = cr_dataset("study-bad", n)
        with warnings.catch_warnings():  # invalid on purpose: what some modalities send
            warnings.simplefilter("ignore")
            for keyword, value in INVALID_ATTRIBUTES.items():
                setattr(ds, keyword, value)
        bad.append(ds)
    store, s, study_uid = received(tmp_path, n_images=0, more=tuple(bad), study="study-bad")
    Worker(store, s, lambda name: FakePipeline(), owner="w").run_once()  # type: ignore[arg-type]
    job = store.jobs(study_uid)[0]
    assert job["state"] == "sending", job
    rows = store.results_of_run(job["current_run_id"])
    assert sorted(r["kind"] for r in rows) == ["gsps", "sc", "sc", "sr"]
    for row in rows:  # read from disk, as the outbox sends them
        assert errors(dciodvfy(Path(row["path"]))) == [], row["kind"]
        ds = dcmread(row["path"])
        assert ds.StudyInstanceUID == study_uid and ds.StudyDate in (None, "") and ds.PatientSex in (None, "")
