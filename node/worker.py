"""The job worker: claims a queued job (opening a run), gathers its inputs, runs the pipeline, writes SR/SC,
queues delivery.

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
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.audit import PHI_READ
from node.config import Settings
from node.context import fetch_context
from node.listener import uid_digest
from node.results.ko import build_rejection_note
from node.results.sc import build_overlays, overlay_png
from node.results.sr import build_sr
from node.results.uids import input_digest, result_uid
from node.store import RunOutcome, Store
from pipelines.base import ClinicalContext, InstanceRef, Pipeline, StudyInput

log = logging.getLogger(__name__)

MANUFACTURER = "dicom-ai-node"
MAX_ATTEMPTS = 3
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
KO_SERIES_NUMBER = 9903


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
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
        self.lease_seconds = 900.0

    def run_once(self) -> bool:
        job = self.store.claim_job(self.owner, self.lease_seconds)
        if job is None:
            return False
        try:
            outcome = self.process(job)
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
            client=self.fhir_client,
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
        destination = "pacs" if self.settings.pacs is not None else None
        if current is not None and current["input_digest"] == digest and current["pipeline_version"] == pipeline.version:
            timings["total_s"] = time.perf_counter() - t0
            summary = {"timings": timings, "fhir_status": context.fhir_status, "n_findings": current["n_findings"],
                       "inputs_missing": [], "sr_sop_uid": current["sr_sop_uid"]}
            self.store.finish_run(job["run_id"], RunOutcome(digest, (), True, summary), destination)
            return JobOutcome(job["job_id"], int(current["n_findings"] or 0), [], unchanged=True)

        t = time.perf_counter()
        result = pipeline.run(
            StudyInput(
                study_instance_uid=job["study_uid"], instances=refs,
                patient_age_years=study["patient_age"], patient_sex=study["patient_sex"] or None,
            ),
            context,
        )
        timings["inference_s"] = time.perf_counter() - t

        t = time.perf_counter()
        superseded = self._objects_of(current)
        predecessor = next((ds for ds in superseded if ds.Modality == "SR"), None)
        objects = self._write_results(job, result, refs, digest, predecessor, superseded)
        timings["results_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        if study["last_received_at"] is not None:
            timings["since_last_instance_s"] = time.time() - float(study["last_received_at"])

        summary = {
            "timings": timings, "fhir_status": context.fhir_status, "n_findings": len(result.findings),
            "inputs_missing": list(result.inputs_missing), "sr_sop_uid": objects[0][0],
        }
        self.store.finish_run(
            job["run_id"],
            RunOutcome(digest, tuple(objects), False, summary,
                       str(predecessor.SOPInstanceUID) if predecessor is not None else None),
            destination,
        )
        return JobOutcome(job["job_id"], len(result.findings), objects)

    def _objects_of(self, current: dict[str, Any] | None) -> list[Dataset]:
        """The SR and overlays of the job's current results, which a new run amends (none for a first run)."""
        if current is None:
            return []
        return [
            dcmread(row["path"], stop_before_pixels=True)
            for row in self.store.results_of_run(current["run_id"])
            if row["kind"] in ("sr", "sc") and Path(row["path"]).exists()
        ]

    def _write_results(
        self, job: dict[str, Any], result: Any, refs: tuple[InstanceRef, ...], digest: str,
        predecessor: Dataset | None, superseded: list[Dataset],
    ) -> list[tuple[str, str, str, str]]:
        analysed = set(result.images_analysed) | {f.sop_instance_uid for f in result.findings}
        with_pixels = {f.sop_instance_uid for f in result.findings}
        sources = [
            dcmread(ref.path, stop_before_pixels=ref.sop_instance_uid not in with_pixels)
            for ref in refs
            if ref.sop_instance_uid in analysed
        ]

        def uid(role: str) -> str:
            return result_uid(job["study_uid"], result.pipeline_name, result.pipeline_version, digest, role)

        version = software_version()
        out_dir = self.results_dir / digest[:24]
        sr = build_sr(
            result, sources, series_instance_uid=uid("sr-series"), sop_instance_uid=uid("sr"),
            series_number=SR_SERIES_NUMBER, manufacturer=MANUFACTURER, software_version=version,
            previous_versions=[predecessor] if predecessor is not None else (),
        )
        objects: list[tuple[str, str, str, str]] = []
        sr_path = out_dir / "sr.dcm"
        _write_dataset(sr, sr_path)
        objects.append((str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), "sr", str(sr_path)))
        overlays = build_overlays(
            result, sources, series_instance_uid=uid("sc-series"), series_number=SC_SERIES_NUMBER,
            sop_uid_for=lambda key: uid(f"sc:{key}"), manufacturer=MANUFACTURER, software_version=version,
            amends=predecessor is not None,
        )
        for n, sc in enumerate(overlays, start=1):
            sc_path = out_dir / f"sc-{n}.dcm"
            _write_dataset(sc, sc_path)
            overlay_png(sc, sc_path.with_suffix(".png"))
            objects.append((str(sc.SOPInstanceUID), str(sc.SeriesInstanceUID), "sc", str(sc_path)))
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
