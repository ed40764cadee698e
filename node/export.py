"""Research export: a study's received instances and the node's current results for it, written to a folder,
de-identified by default (dicognito), with an audit record of what left the node.

One dicognito ``Anonymizer`` per export maps every UID consistently, so the exported SR still points at the
exported images and overlays. Files are named by position, never by UID or patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from node.audit import EXPORT
from node.store import Store


@dataclass(frozen=True)
class ExportSummary:
    instances: int
    results: int
    deidentified: bool
    folder: Path


def export_study(store: Store, study_uid: str, out_dir: Path, *, deidentify: bool = True,
                 seed: str | None = None) -> ExportSummary:
    """Write the study to ``out_dir`` (created; must be empty). ``seed`` makes the de-identification repeatable."""
    sources = store.study_instances(study_uid)
    if not sources:
        raise LookupError("no such study in this node's database (nothing received for that Study Instance UID)")
    results = [
        row for job in store.jobs(study_uid) if job["current_run_id"]
        for row in store.results_of_run(job["current_run_id"])
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: export into a new folder")
    anonymizer = None
    if deidentify:
        from dicognito.anonymizer import Anonymizer

        anonymizer = Anonymizer(seed=seed)
    for kind, rows in (("image", sources), ("result", results)):
        for n, row in enumerate(rows, start=1):
            ds = dcmread(row["path"])
            if anonymizer is not None:
                anonymizer.anonymize(ds)
            ds.save_as(out_dir / f"{kind}-{n:05d}.dcm", enforce_file_format=True)
    store.audit(EXPORT, "de-identified" if deidentify else "identified", study_uid=study_uid,
                detail={"instances": len(sources), "results": len(results), "folder": str(out_dir)})
    return ExportSummary(len(sources), len(results), deidentify, out_dir)
