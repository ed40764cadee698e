"""A pipeline run stuck past ``budgets.pipeline_seconds`` fails with "deadline exceeded" and the study behind it is
processed; /healthz is degraded (503, naming the check) while the stuck run's thread still executes, and 200 again
once it ends. Real peers: dcmtk storescu sends both studies, Orthanc receives the results.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from node.localpeers.orthanc import Orthanc
from pipelines.base import ClinicalContext, PipelineResult, StudyInput

from node_fakes import FakePipeline, cr_dataset, write_cr
from peers import InProcessNode, storescu, wait_for

pytestmark = pytest.mark.integration

BUDGET = 3.0


class StuckOnOne(FakePipeline):
    """Hangs on one study (a model stuck in a driver call, say) until released; quick on every other."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck_study = ""
        self.release = threading.Event()

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        if study.study_instance_uid == self.stuck_study:
            self.release.wait(60)
        return super().run(study, context)


def test_a_stuck_pipeline_fails_its_run_the_queue_moves_and_healthz_says_so(tmp_path: Path, pacs: Orthanc) -> None:
    pipeline = StuckOnOne()
    node = InProcessNode(tmp_path / "node", pacs, pipeline, quiet_seconds=1.0,
                         extra={"budgets": {"pipeline_seconds": BUDGET}}).start()
    health = f"http://127.0.0.1:{node.http_port}/healthz"
    try:
        studies = {}
        for name in ("stuck", "next"):
            ds = cr_dataset(f"{name}-{time.time()}", 1)
            studies[name] = str(ds.StudyInstanceUID)
            path = write_cr(tmp_path / f"{name}.dcm", ds)
            if name == "stuck":
                pipeline.stuck_study = studies[name]
            done = storescu(node.port, [path])
            assert done.returncode == 0, done.stderr
        assert httpx.get(health).status_code == 200
        for study_uid in studies.values():
            wait_for(lambda: node.settled(study_uid), 60, "the study to settle")

        store = node.store()
        (stuck,) = store.jobs(studies["stuck"])
        (run,) = store.runs(stuck["job_id"])
        (following,) = store.jobs(studies["next"])
        store.close()
        assert stuck["state"] == "failed" and stuck["attempts"] == 1
        assert stuck["error"].startswith(f"deadline exceeded: pipeline {pipeline.name} ran longer than the budget")
        failed_after = float(run["finished_at"]) - float(run["started_at"])
        assert BUDGET <= failed_after < BUDGET + 1.5
        assert following["state"] == "sent"
        next_after = float(following["updated_at"]) - float(run["finished_at"])
        study = node.study(studies["stuck"])
        assert study is not None and study["state"] == "failed"

        degraded = httpx.get(health)
        assert degraded.status_code == 503
        checks = degraded.json()["checks"]
        reason = checks["pipeline_threads"]
        assert reason.startswith(f"1 pipeline run(s) past their budget still executing (pipeline {pipeline.name}")
        assert [name for name, value in checks.items() if value is not True] == ["pipeline_threads"]
        metrics = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", headers=node.api_headers()).text
        assert "ainode_pipeline_runs_abandoned 1.0" in metrics

        pipeline.release.set()
        wait_for(lambda: httpx.get(health).status_code == 200, 10, "/healthz to recover once the stuck run ended")
        store = node.store()
        assert store.jobs(studies["stuck"])[0]["state"] == "failed", "its late end changes nothing"
        store.close()
        print(f"stuck pipeline: run failed 'deadline exceeded' {failed_after:.1f} s after it started (budget "
              f"{BUDGET:g} s); the next study delivered {next_after:.1f} s later; /healthz 503 (pipeline_threads) "
              "until the stuck thread ended, then 200")
    finally:
        pipeline.release.set()
        node.stop()
