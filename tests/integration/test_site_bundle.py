"""A site's own bundle, trained by ``dicom-ai-node train --datalist`` on a small cohort written to disk in the
documented datalist layout, installed with ``dicom-ai-node pipelines install`` and routed to by name, is what the
running node uses: real Orthanc (the PACS the results go to) and dcmtk storescu (the modality); no code change, no FHIR.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from devtools.synthetic.cohort import write_demo_study
from node.localpeers.orthanc import Orthanc
from node.results.sr import read_findings
from pipelines.common import bundle_layout

from peers import TOOL_ENV, NodeProcess, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration

SITE_NAME = "site-bone"


def site_bundle(out: Path) -> Path:
    """A site's trained bundle, made as a site would: its data exported as a datalist (here the synthetic cohort,
    written by ``python -m devtools.synthetic``), then ``dicom-ai-node train``; briefly, so the test stays short.
    Its folder name does not matter: install files it under the metadata's name."""
    cohort = out / "site-data"
    written = subprocess.run([sys.executable, "-m", "devtools.synthetic", str(cohort), "--n-patients", "10",
                              "--seed", "21"], capture_output=True, text=True, env=TOOL_ENV, timeout=120)
    assert written.returncode == 0, written.stderr
    source = out / "my-trained-bundle"
    trained = subprocess.run(
        [sys.executable, "-m", "node.cli", "train", "radiograph-lesion", "--datalist", str(cohort / "datalist.json"),
         "--out", str(source), "--name", SITE_NAME, "--version", "1.0.0", "--epochs-detector", "2",
         "--epochs-classifier", "2", "--device", "cpu", "--threads", "2"],
        capture_output=True, text=True, env=TOOL_ENV, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert bundle_layout.read_metadata(source)["name"] == SITE_NAME
    return source


@pytest.fixture()
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path / "orthanc") as orthanc:
        yield orthanc


def test_an_installed_site_bundle_is_routed_by_name_and_named_in_the_results(pacs: Orthanc, tmp_path: Path) -> None:
    bundles_dir = tmp_path / "site-bundles"
    route = f'[pipelines]\nbundles_dir = "{bundles_dir}"\n[[route]]\npipeline = "{SITE_NAME}"\nModality = "^CR$"\n'
    node = NodeProcess(tmp_path / "node", pacs, None, extra_toml=route)
    installed = node.cli("pipelines", "install", str(site_bundle(tmp_path)))
    assert f"installed {SITE_NAME} 1.0.0 (radiograph-lesion) at {bundles_dir / SITE_NAME}" in installed
    assert SITE_NAME in node.cli("pipelines", "list")
    node.start()
    try:
        case = write_demo_study(tmp_path / "study", seed=7)
        sent = storescu(node.port, case.files)
        assert sent.returncode == 0, sent.stderr
        found = wait_for(lambda: (r := results_in_orthanc(pacs, case.study_instance_uid))["SR"] and r, 90,
                         "the site bundle's SR in Orthanc")
        (sr,) = found["SR"]
        summary = read_findings(sr)
        assert (summary.algorithm_name, summary.algorithm_version) == (SITE_NAME, "1.0.0")
        (equipment,) = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
        assert equipment.ManufacturerModelName == f"{SITE_NAME} 1.0.0"
        # processed by the site's model: each image analysed, or left out with the site model's own reason
        assert len(summary.images_analysed) + len(summary.instances_excluded) == len(case.files)
        (study,) = [s for s in node.api_studies() if s["study_uid"] == case.study_instance_uid]
        assert [job["pipeline"] for job in study["jobs"]] == [SITE_NAME]
    finally:
        node.stop()
