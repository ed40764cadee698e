"""The job worker: claims a queued job (opening a run), gathers its inputs, runs the pipeline, writes SR/SC/GSPS,
queues delivery.

Each stage has a wall-clock budget ([budgets]): the FHIR fetch past its budget gives image-only results whose SR
says "timeout"; a pipeline run past its budget fails the run with "deadline exceeded" and the worker moves on (the
run's thread cannot be killed: it is abandoned, and /healthz says so until it ends). An input that cannot be
decoded is left out with its reason, the rest is analysed, and the SR lists what was not; when nothing is left,
the SR says "Not Evaluated" and why, and the job is done (a retry would decode no better).

The instances a job reads were selected once, at routing, and are stored with it. Result UIDs are derived from
study + pipeline + version + a digest of the inputs (each instance's content and the clinical context), so a job
replayed after a crash produces the very same objects and the PACS keeps one copy. When the digest equals the
one of the job's current results, nothing is run or sent; when it differs, the new SR amends the current one
(Predecessor Documents Sequence).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, TypeVar

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.audit import PHI_READ
from node.config import Settings
from node.context import fetch_context
from node.listener import uid_digest
from node.pixels import decode_problem
from node.results.gsps import build_presentation_states
from node.results.ko import build_rejection_note
from node.results.sc import build_overlays, overlay_png
from node.results.sr import build_sr
from node.results.uids import input_digest, result_uid
from node.results.voi import has_own_voi
from node.store import DeliveryRoute, RunOutcome, Store
from pipelines.base import (
    ClinicalContext,
    CodedClass,
    DisplayWindow,
    ExcludedInstance,
    InstanceRef,
    Pipeline,
    PipelineResult,
    StudyInput,
    missing_inputs,
)

log = logging.getLogger(__name__)

MANUFACTURER = "dicom-ai-node"
MAX_ATTEMPTS = 3
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
KO_SERIES_NUMBER = 9903
GSPS_SERIES_NUMBER = 9904

T = TypeVar("T")


class DeadlineExceeded(RuntimeError):
    """A stage ran past its budget; the message begins with "deadline exceeded" and names the budget's key."""


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    n_findings: int
    objects: list[tuple[str, str, str, str]]  # (sop_uid, series_uid, kind, path)
    unchanged: bool = False


def software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dicom-ai-node")
    except PackageNotFoundError:
        return "0+unknown"


def clinical_summary(context: ClinicalContext) -> str:
    """A canonical text of what the EHR contributed, for the input digest (values, not just their presence)."""
    labs = {code: [lab.value, lab.unit, lab.effective] for code, lab in sorted(context.labs.items())}
    notes = [hashlib.sha256(n.encode("utf-8")).hexdigest() for n in context.notes]
    return json.dumps({"fhir": context.fhir_status, "labs": labs, "notes": notes}, sort_keys=True)


def _write_dataset(ds: Dataset, path: Path) -> None:
    """Write durably: temp file, fsync, rename (a crash leaves the old file or none, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the job is retried, and half a file would only hold space
        raise


def _nothing_analysed(pipeline: Pipeline, context: ClinicalContext,
                      excluded: tuple[ExcludedInstance, ...]) -> PipelineResult:
    """The result of a run in which no input could be decoded: the pipeline never ran, so no finding and no
    threshold; the SR says "Not Evaluated" and lists every instance with its reason."""
    return PipelineResult(
        pipeline_name=pipeline.name, pipeline_version=pipeline.version, findings=(), images_analysed=(),
        detection_threshold=None, inputs_missing=missing_inputs(pipeline.requirements, context),
        fhir_status=context.fhir_status, device="none", instances_excluded=excluded,
    )


def _header_of(ref: InstanceRef, study_uid: str) -> Dataset:
    """An excluded instance as SR evidence: its header, or where even that cannot be read, the UIDs the index has."""
    try:
        return dcmread(ref.path, stop_before_pixels=True)
    except Exception:  # unreadable: exactly why it was left out
        ds = Dataset()
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        ds.SeriesInstanceUID = ref.series_instance_uid
        ds.StudyInstanceUID = study_uid
        return ds


def _analysed_source(ref: InstanceRef, drawn_on: bool) -> Dataset:
    """An analysed image for the result builders: with pixel data when an overlay is drawn on it or when it states no
    VOI of its own (the presentation state's default window is computed from its pixels); its header otherwise."""
    header = dcmread(ref.path, stop_before_pixels=True)
    return dcmread(ref.path) if drawn_on or not has_own_voi(header) else header


class Worker:
    """Processes one job at a time; ``run_once`` returns False when the queue is empty."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        load_pipeline: Callable[[str], Pipeline],
        owner: str,
        fhir_client: Any = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.load_pipeline = load_pipeline
        self.owner = owner
        self.fhir_client = fhir_client
        self.results_dir = settings.node.data_dir / "results"
        budgets = settings.budgets
        # The lease only matters after a crash; it must outlast every budget of a run, or a live run is reclaimed.
        self.lease_seconds = max(900.0, budgets.fhir_seconds + budgets.pipeline_seconds + budgets.stall_seconds)
        self._abandoned: list[tuple[threading.Thread, str, float]] = []  # (thread, what, when) past their budget
        self._abandoned_lock = threading.Lock()

    def abandoned_runs(self) -> list[str]:
        """Pipeline runs past their budget whose threads still execute (Python cannot stop them; a restart does)."""
        now = time.time()
        with self._abandoned_lock:
            self._abandoned = [entry for entry in self._abandoned if entry[0].is_alive()]
            return [f"{what}, abandoned {now - when:.0f} s ago" for _, what, when in self._abandoned]

    def run_once(self) -> bool:
        job = self.store.claim_job(self.owner, self.lease_seconds)
        if job is None:
            return False
        try:
            outcome = self.process(job)
        except DeadlineExceeded as exc:
            # Retrying cannot help: the same inputs would run as long. The queue moves on.
            log.error("job for study %s (%s) failed: %s", uid_digest(job["study_uid"]), job["pipeline"], exc)
            self.store.fail_run(job["run_id"], str(exc), retry=False)
        except Exception as exc:
            retry = int(job["attempts"]) < MAX_ATTEMPTS
            log.error(
                "job for study %s (%s) failed on attempt %d%s: %s",
                uid_digest(job["study_uid"]), job["pipeline"], job["attempts"],
                ", will retry" if retry else ", giving up", exc,
            )
            log.debug("%s", traceback.format_exc())
            self.store.fail_run(job["run_id"], f"{type(exc).__name__}: {exc}", retry=retry)
        else:
            log.info(
                "study %s: %s %s", uid_digest(job["study_uid"]), job["pipeline"],
                "inputs unchanged, nothing new sent" if outcome.unchanged else
                f"wrote {outcome.n_findings} finding(s), {len(outcome.objects)} object(s)",
            )
        return True

    def process(self, job: dict[str, Any]) -> JobOutcome:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        study = self.store.study(job["study_uid"])
        if study is None:
            raise RuntimeError("job refers to an unknown study")
        pipeline = self.load_pipeline(job["pipeline"])
        timings["load_s"] = time.perf_counter() - t0

        wanted = json.loads(job["inputs"] or "[]")
        rows = self.store.instances_by_uid(wanted)
        if not rows or len(rows) != len(wanted):
            raise RuntimeError(f"{len(wanted) - len(rows)} of the job's {len(wanted)} input instance(s) are not indexed")
        refs = tuple(
            InstanceRef(
                path=Path(r["path"]), sop_instance_uid=r["sop_instance_uid"], sop_class_uid=r["sop_class_uid"],
                series_instance_uid=r["series_uid"], modality=r["modality"],
            )
            for r in rows
        )

        t = time.perf_counter()
        context = fetch_context(
            self.settings.fhir, study["patient_id"] or "", study["study_date"] or None, pipeline.requirements,
            client=self.fhir_client, budget_seconds=self.settings.budgets.fhir_seconds,
        )
        timings["fhir_s"] = time.perf_counter() - t
        if self.settings.fhir is not None:
            self.store.audit(
                PHI_READ, context.fhir_status, actor=self.settings.node.ae_title, source=self.settings.fhir.base_url,
                study_uid=job["study_uid"],
                detail={"resources": "Patient, Observation, DocumentReference", "labs": len(context.labs),
                        "notes": len(context.notes)},
            )
        if context.fhir_status != "ok":
            log.warning("study %s: clinical context %s (%s); running image-only",
                        uid_digest(job["study_uid"]), context.fhir_status, context.detail)

        # Content digests too: an instance replaced with other content under the same UID changes the inputs.
        digest = input_digest([f"{r['sop_instance_uid']}:{r['digest'] or ''}" for r in rows], clinical_summary(context))
        current = self.store.current_run(job["job_id"])
        destinations = [DeliveryRoute(d.name, d.kinds) for d in self.settings.destinations]
        if current is not None and current["input_digest"] == digest and current["pipeline_version"] == pipeline.version:
            timings["total_s"] = time.perf_counter() - t0
            summary = {"timings": timings, "fhir_status": context.fhir_status, "n_findings": current["n_findings"],
                       "inputs_missing": [], "sr_sop_uid": current["sr_sop_uid"]}
            self.store.finish_run(job["run_id"], RunOutcome(digest, (), True, summary), destinations)
            return JobOutcome(job["job_id"], int(current["n_findings"] or 0), [], unchanged=True)

        t = time.perf_counter()
        study_input = StudyInput(
            study_instance_uid=job["study_uid"], instances=refs,
            patient_age_years=study["patient_age"], patient_sex=study["patient_sex"] or None,
        )
        result = self._analyse(pipeline, study_input, context)
        timings["inference_s"] = time.perf_counter() - t
        if result.instances_excluded:
            reasons = sorted({e.reason for e in result.instances_excluded})
            log.warning("study %s: %d of %d instance(s) not analysed (%s); the SR lists them",
                        uid_digest(job["study_uid"]), len(result.instances_excluded), len(refs), ", ".join(reasons))

        t = time.perf_counter()
        superseded = self._objects_of(current)
        predecessor = next((ds for ds in superseded if ds.Modality == "SR"), None)
        objects = self._write_results(job, result, refs, digest, predecessor, superseded,
                                      pipeline.requirements.anatomy, pipeline.requirements.display_window)
        timings["results_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        if study["last_received_at"] is not None:
            timings["since_last_instance_s"] = time.time() - float(study["last_received_at"])

        summary = {
            "timings": timings, "fhir_status": context.fhir_status, "n_findings": len(result.findings),
            "inputs_missing": list(result.inputs_missing), "sr_sop_uid": objects[0][0],
            "instances_excluded": [[e.sop_instance_uid, e.reason, e.detail] for e in result.instances_excluded],
            "findings": [
                {"tracking_uid": f.tracking_uid, "tracking_id": f.tracking_id, "class_value": f.class_code.value,
                 "class_scheme": f.class_code.scheme_designator, "class_meaning": f.class_code.meaning,
                 "probability": f.probability, "sop_instance_uid": f.sop_instance_uid, "frame_number": f.frame_number}
                for f in result.findings
            ],
        }
        self.store.finish_run(
            job["run_id"],
            RunOutcome(digest, tuple(objects), False, summary,
                       str(predecessor.SOPInstanceUID) if predecessor is not None else None),
            destinations,
        )
        return JobOutcome(job["job_id"], len(result.findings), objects)

    def _analyse(self, pipeline: Pipeline, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        """Run the pipeline within its budget; when it fails, leave out the inputs that cannot be decoded and run it
        again on the rest (same budget). A failure with every input decodable is the pipeline's own: raised."""
        deadline = time.monotonic() + self.settings.budgets.pipeline_seconds
        try:
            result = self._within(deadline, f"pipeline {pipeline.name}", lambda: pipeline.run(study, context))
        except DeadlineExceeded:
            raise
        except Exception as first_error:
            # Decoding every input up front would cost every job a second decode; doing it after a failure costs
            # only the jobs that failed. Pipelines may also report such inputs themselves (instances_excluded).
            probed = self._within(deadline, "decoding the inputs", lambda: [
                decode_problem(ref.path, ref.sop_instance_uid) for ref in study.instances])
            excluded = tuple(p for p in probed if p is not None)
            if not excluded:
                raise first_error
            if len(excluded) == len(study.instances):
                return _nothing_analysed(pipeline, context, excluded)
            left = {e.sop_instance_uid for e in excluded}
            rest = replace(study, instances=tuple(r for r in study.instances if r.sop_instance_uid not in left))
            result = self._within(deadline, f"pipeline {pipeline.name}", lambda: pipeline.run(rest, context))
            result = replace(result, instances_excluded=excluded + result.instances_excluded)
        return result

    def _within(self, deadline: float, what: str, work: Callable[[], T]) -> T:
        """``work()`` in its own thread, waited for until ``deadline`` (time.monotonic()); past it the thread is
        abandoned (it cannot be killed) and DeadlineExceeded is raised, so the worker can take the next job."""
        budget = self.settings.budgets.pipeline_seconds
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, work()))
            except BaseException as exc:  # handed back to the waiting worker
                outcome.append((False, exc))

        thread = threading.Thread(target=run, name=what, daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            with self._abandoned_lock:
                self._abandoned.append((thread, what, time.time()))
            raise DeadlineExceeded(f"deadline exceeded: {what} ran longer than the budget of {budget:g} s "
                                   "(budgets.pipeline_seconds)")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _objects_of(self, current: dict[str, Any] | None) -> list[Dataset]:
        """The SR, overlays and presentation states of the job's current results, which a new run amends (none for a
        first run). Not its rejection note: that one rejected older results and stays true."""
        if current is None:
            return []
        return [
            dcmread(row["path"], stop_before_pixels=True)
            for row in self.store.results_of_run(current["run_id"])
            if row["kind"] in ("sr", "sc", "gsps") and Path(row["path"]).exists()
        ]

    def _write_results(
        self, job: dict[str, Any], result: Any, refs: tuple[InstanceRef, ...], digest: str,
        predecessor: Dataset | None, superseded: list[Dataset], anatomy: CodedClass | None = None,
        window: DisplayWindow | None = None,
    ) -> list[tuple[str, str, str, str]]:
        analysed = set(result.images_analysed) | {f.sop_instance_uid for f in result.findings}
        with_findings = {f.sop_instance_uid for f in result.findings}
        # Pixels only where they are drawn on (overlays) or where the GSPS needs them for a default window.
        sources: list[Dataset] = [_analysed_source(ref, ref.sop_instance_uid in with_findings)
                                  for ref in refs if ref.sop_instance_uid in analysed]
        # after the analysed ones: the SR takes patient and study from its first source
        excluded = {e.sop_instance_uid for e in result.instances_excluded}
        sources += [_header_of(ref, job["study_uid"]) for ref in refs if ref.sop_instance_uid in excluded]

        def uid(role: str) -> str:
            return result_uid(job["study_uid"], result.pipeline_name, result.pipeline_version, digest, role)

        version = software_version()
        out_dir = self.results_dir / digest[:24]
        sr = build_sr(
            result, sources, series_instance_uid=uid("sr-series"), sop_instance_uid=uid("sr"),
            series_number=SR_SERIES_NUMBER, manufacturer=MANUFACTURER, software_version=version,
            previous_versions=[predecessor] if predecessor is not None else (), anatomy=anatomy,
        )
        objects: list[tuple[str, str, str, str]] = []
        sr_path = out_dir / "sr.dcm"
        _write_dataset(sr, sr_path)
        objects.append((str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), "sr", str(sr_path)))
        overlays = build_overlays(
            result, sources, series_instance_uid=uid("sc-series"), series_number=SC_SERIES_NUMBER,
            sop_uid_for=lambda key: uid(f"sc:{key}"), manufacturer=MANUFACTURER, software_version=version,
            amends=predecessor is not None, window=window,
        )
        for n, sc in enumerate(overlays, start=1):
            sc_path = out_dir / f"sc-{n}.dcm"
            _write_dataset(sc, sc_path)
            overlay_png(sc, sc_path.with_suffix(".png"))
            objects.append((str(sc.SOPInstanceUID), str(sc.SeriesInstanceUID), "sc", str(sc_path)))
        # A presentation state annotates analysed images; with none (every input left out) the SR says it all.
        states = build_presentation_states(
            result, sources, series_instance_uid=uid("gsps-series"), series_number=GSPS_SERIES_NUMBER,
            sop_uid_for=lambda key: uid(f"gsps:{key}"), manufacturer=MANUFACTURER, software_version=version,
            amends=predecessor is not None, window=window,
        ) if result.images_analysed or result.findings else []
        for n, state in enumerate(states, start=1):
            gsps_path = out_dir / ("gsps.dcm" if n == 1 else f"gsps-{n}.dcm")
            _write_dataset(state, gsps_path)
            objects.append((str(state.SOPInstanceUID), str(state.SeriesInstanceUID), "gsps", str(gsps_path)))
        if superseded:
            note = build_rejection_note(
                superseded, amended_by=str(sr.SOPInstanceUID), pipeline=result.pipeline_name,
                version=result.pipeline_version, series_instance_uid=uid("ko-series"), sop_instance_uid=uid("ko"),
                series_number=KO_SERIES_NUMBER, manufacturer=MANUFACTURER,
            )
            ko_path = out_dir / "superseded-ko.dcm"
            _write_dataset(note, ko_path)
            objects.append((str(note.SOPInstanceUID), str(note.SeriesInstanceUID), "ko", str(ko_path)))
        return objects
