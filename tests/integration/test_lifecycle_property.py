"""Randomised interleavings (hypothesis) of what a hospital does to a study, against Orthanc and dcmtk:
instances sent by storescu straight to the node or through the PACS, re-sends of the same instances, the PACS
re-sending the whole study with our results in it, pauses, and restarts of the node.

After each interleaving: the study reaches a final state with nothing pending; exactly one current SR in Orthanc,
covering every routed instance received; every SR the node wrote covers every routed instance received before
its run began; no run left running.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from node.localpeers.orthanc import Orthanc
from pydicom import dcmread

from node_fakes import FakePipeline, cr_dataset, write_cr
from peers import InProcessNode, storescu, wait_for
from test_lifecycle import srs_in_orthanc

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("LIFECYCLE_EXAMPLES", "50"))
POOL = {1: "CR", 2: "CR", 3: "CR", 4: "CR", 5: "MR"}  # instance number -> modality (MR: no pipeline reads it)

send_step = st.tuples(st.sampled_from(["send", "via-pacs"]), st.sampled_from(sorted(POOL)))
step = st.one_of(
    send_step,
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.3, 0.8, 1.5])),
    st.just(("restart",)),
    st.just(("pacs-resend",)),
)
interleaving = st.tuples(send_step, st.lists(step, max_size=7)).map(lambda t: [t[0], *t[1]])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessNode, Orthanc, Path]]:
    root = tmp_path_factory.mktemp("property")
    with Orthanc(workdir=root / "orthanc") as pacs:
        node = InProcessNode(root / "node", pacs, FakePipeline(), quiet_seconds=0.5).start()
        try:
            yield node, pacs, root
        finally:
            node.stop()


def run_steps(node: InProcessNode, pacs: Orthanc, root: Path, steps: list[Any]) -> tuple[str, dict[int, Path]]:
    name = f"prop-{uuid.uuid4()}"
    files = {k: write_cr(root / f"{name}-{k}.dcm", cr_dataset(name, k, modality=m)) for k, m in POOL.items()}
    study_uid = str(cr_dataset(name, 1).StudyInstanceUID)
    for action, *args in steps:
        if action == "send":
            done = storescu(node.port, [files[args[0]]])
            assert done.returncode == 0, done.stderr
        elif action == "via-pacs":
            pacs.send_to_modality("ainode", [pacs.upload(files[args[0]])["ID"]])
        elif action == "pacs-resend":
            orthanc_id = pacs.study_id(study_uid)
            if orthanc_id is not None:
                pacs.send_to_modality("ainode", [orthanc_id])
        elif action == "wait":
            time.sleep(args[0])
        elif action == "restart":
            node.restart()
    return study_uid, files


def check_invariants(node: InProcessNode, pacs: Orthanc, study_uid: str, sent: dict[int, Path]) -> None:
    wait_for(lambda: node.settled(study_uid), 60, f"study {study_uid} to settle")
    store = node.store()
    try:
        study = store.study(study_uid)
        routed = {str(r["sop_instance_uid"]): float(r["received_at"])
                  for r in store.study_instances(study_uid) if r["modality"] == "CR"}
        expected = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for k, p in sent.items() if POOL[k] == "CR"}
        assert set(routed) == expected, "an acknowledged routed instance is missing from the index"
        runs = [r for j in store.jobs(study_uid) for r in store.runs(j["job_id"])]
    finally:
        store.close()
    assert study is not None
    assert all(r["state"] != "running" for r in runs), "a run was left running"
    for r in runs:
        if r["state"] in ("sending", "sent", "superseded", "unchanged"):
            before = {uid for uid, at in routed.items() if at < float(r["started_at"])}
            missing = before - set(json.loads(r["inputs"]))
            assert not missing, f"run {r['run_id']} missed {len(missing)} routed instance(s) received before it began"
    current, _ = srs_in_orthanc(pacs, study_uid)  # asserts: never two current SRs
    if expected:
        assert study["state"] == "sent", study["state_reason"]
        assert current is not None and set(current.images_analysed) == expected
    else:
        assert study["state"] == "no-pipeline" and current is None


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=interleaving)
def test_every_interleaving_ends_final_covered_and_without_duplicates(
    world: tuple[InProcessNode, Orthanc, Path], steps: list[Any]
) -> None:
    node, pacs, root = world
    study_uid, files = run_steps(node, pacs, root, steps)
    sent = {args[0]: files[args[0]] for action, *args in steps if action in ("send", "via-pacs")}
    check_invariants(node, pacs, study_uid, sent)
