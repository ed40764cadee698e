"""A site's own bundle, installed with ``dicom-ai-node pipelines install`` and routed to by name, is what the running
node uses: real Orthanc (the PACS the results go to) and dcmtk storescu (the modality); no code change, no FHIR.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from devtools.synthetic.cohort import write_demo_study
from node.localpeers.orthanc import Orthanc
from node.results.sr import read_findings
from pipelines.common import bundle_layout
from pipelines.registry import SHIPPED_BUNDLES

from peers import NodeProcess, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration

SITE_NAME = "site-bone"


def site_bundle(out: Path) -> Path:
    """Stands for a site's trained bundle: the shipped one under the site's name and version (its own folder name
    does not matter, install files it under the metadata's name)."""
    source = out / "my-trained-bundle"
    shutil.copytree(SHIPPED_BUNDLES / "radiograph-lesion", source)
    metadata = bundle_layout.read_metadata(source)
    metadata.update(name=SITE_NAME, version="1.0.0", changelog={"1.0.0": "trained on the site's cohort"})
    (source / bundle_layout.METADATA).write_text(json.dumps(metadata, indent=2))
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
        assert summary.findings, "the site's bundle (the shipped weights) finds the demo study's lesions"
        (study,) = [s for s in node.api_studies() if s["study_uid"] == case.study_instance_uid]
        assert [job["pipeline"] for job in study["jobs"]] == [SITE_NAME]
    finally:
        node.stop()
