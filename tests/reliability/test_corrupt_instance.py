"""One corrupt compressed instance among valid ones costs the study only that instance: the valid images are analysed
and get their overlays, and the SR names the excluded one with its reason. Real peers: dcmtk storescu sends the study
(three CRs uncompressed, one whole JPEG 2000 CR, one JPEG 2000 CR whose tile-part header is garbled, which the
receive-time "header" check cannot see), Orthanc receives the results; the SR read back from Orthanc passes dciodvfy.
The valid images are training-cohort radiographs, which the shipped model analyses (it leaves other images out).

Two pipelines: one that simply fails on the bad image (the worker finds the undecodable input and runs it again
without), and the shipped radiograph-lesion pipeline, which leaves the image out itself.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from node.localpeers.orthanc import Orthanc
from node.results.sr import read_findings
from pipelines.base import ClinicalContext, PipelineResult, StudyInput

from node_fakes import FakePipeline, j2k_cr, phantom_cr, write_cr
from peers import InProcessNode, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration


class Decoding(FakePipeline):
    """Decodes every image, as a model must, and so raises on the garbled one (FakePipeline reads headers only)."""

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        for ref in study.instances:
            dcmread(ref.path).pixel_array
        return super().run(study, context)


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def radiograph_lesion() -> Any:
    from pipelines.registry import load_pipeline

    return load_pipeline("radiograph-lesion", device="cpu")


@pytest.mark.parametrize("which", ["failing pipeline", "radiograph-lesion"])
def test_a_corrupt_instance_is_excluded_and_the_rest_analysed(tmp_path: Path, pacs: Orthanc, which: str) -> None:
    pipeline = Decoding() if which == "failing pipeline" else radiograph_lesion()
    node = InProcessNode(tmp_path / "node", pacs, pipeline, quiet_seconds=1.0).start()
    try:
        name = f"corrupt-{which}-{time.time()}"
        valid = [write_cr(tmp_path / f"cr-{n}.dcm", phantom_cr(name, n, seed=n)) for n in (1, 2, 3)]
        valid.append(write_cr(tmp_path / "j2k-4.dcm", phantom_cr(name, 4, seed=4, compressed=True)))
        bad = j2k_cr(name, 5, "garbled")
        files = [*valid, write_cr(tmp_path / "j2k-5-garbled.dcm", bad)]
        study_uid = str(bad.StudyInstanceUID)
        started = time.monotonic()
        done = storescu(node.port, files, options=("-R", "-xv"))  # offer each file's own transfer syntax
        assert done.returncode == 0, done.stderr
        store = node.store()
        assert len(store.study_instances(study_uid)) == 5, "the garbled file passes the receive-time header check"
        store.close()
        wait_for(lambda: node.settled(study_uid), 90, "the study to settle")
        took = time.monotonic() - started

        study = node.study(study_uid)
        assert study is not None and study["state"] == "sent"
        results = results_in_orthanc(pacs, study_uid)
        (sr,) = results["SR"]
        summary = read_findings(sr)
        analysed = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in valid}
        assert set(summary.images_analysed) == analysed
        (excluded,) = summary.instances_excluded
        assert excluded.sop_instance_uid == str(bad.SOPInstanceUID) and excluded.reason == "undecodable"
        assert "J2K" in excluded.detail
        assert {f.sop_instance_uid for f in summary.findings} <= analysed
        assert len(results["SC"]) == len({f.sop_instance_uid for f in summary.findings})
        path = tmp_path / "sr-from-orthanc.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
        print(f"corrupt instance ({which}): {len(summary.images_analysed)} of 5 analysed, "
              f"{len(summary.findings)} finding(s), {len(results['SC'])} overlay(s); SR names the excluded one as "
              f"'{excluded.reason}' ({excluded.detail[:110]}...); sent to settled {took:.1f} s")
    finally:
        node.stop()
