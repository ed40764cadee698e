"""The worklist in Debian's headless Chromium (Playwright): two studies sent with storescu to the in-process node
(its real listener, assembler, worker and web application, with Orthanc as the PACS) appear without a reload, in
AI-priority order with the right badge and reason, whatever their arrival order; a study page shows the overlay
and the findings. The test writes the screenshots the README shows (docs/screenshots/).

The pipeline is the test's own (no torch): a malignant finding on a study described "lesion", an error on one
described "fail", no finding otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from node.localpeers.orthanc import Orthanc
from node.web.auth import hash_password
from pipelines.base import (
    ClinicalContext, Finding, PipelineRequirements, PipelineResult, PixelBox, SeriesFilter, StudyInput,
)
from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION_CLASSES
from pydicom import dcmread

from node_fakes import cr_dataset, uid, write_cr
from peers import InProcessNode, storescu

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (deploy/setup.sh does)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.viewer]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
MALIGNANT = RADIOGRAPH_LESION_CLASSES[2]
TIMEOUT_MS = 60_000


class LesionIfDescribed:
    """A malignant lesion in the middle of every image of a study whose description says "lesion"; an error on a
    study whose description says "fail" (every attempt)."""

    name = "lesion-if-described"
    version = "1.0"
    requirements = PipelineRequirements(modalities=("CR",), series_filter=SeriesFilter(), labs=(), reads_notes=False,
                                        dimensionality=2)

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        findings = []
        for ref in study.instances:
            ds = dcmread(ref.path)
            if "fail" in str(ds.get("StudyDescription", "")):
                raise RuntimeError("the test's pipeline fails on purpose")
            if "lesion" not in str(ds.get("StudyDescription", "")):
                continue
            n = int(ds.Rows)
            findings.append(Finding(
                tracking_uid=uid(ref.sop_instance_uid, "finding"), tracking_id="lesion 1", class_code=MALIGNANT,
                probability=0.87, class_probabilities={c.meaning: p for c, p in zip(RADIOGRAPH_LESION_CLASSES,
                                                                                   (0.05, 0.08, 0.87))},
                detection_score=0.9, sop_instance_uid=ref.sop_instance_uid, sop_class_uid=ref.sop_class_uid,
                frame_number=1, box=PixelBox(n / 4, n / 4, n / 2, n / 2), inputs_used=("image",), inputs_missing=(),
            ))
        return PipelineResult(
            pipeline_name=self.name, pipeline_version=self.version, findings=tuple(findings),
            images_analysed=tuple(r.sop_instance_uid for r in study.instances), detection_threshold=0.5,
            inputs_missing=(), fhir_status=context.fhir_status, device="cpu",
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as pacs:
        running = InProcessNode(
            tmp_path_factory.mktemp("node"), pacs, LesionIfDescribed(), quiet_seconds=1.0,
            extra={"web": {"viewer_url": "http://viewer.example/viewer?StudyInstanceUIDs={study_uid}"}},
        ).start()
        store = running.store()
        store.add_user("rita", hash_password("reader-password"), "reader")
        store.close()
        yield running
        running.stop()


def study_files(folder: Path, name: str, description: str, patient_id: str) -> tuple[str, list[Path]]:
    ds = cr_dataset(name, 1, patient_id=patient_id, size=128)
    ds.StudyDescription = description
    return str(ds.StudyInstanceUID), [write_cr(folder / f"{name}.dcm", ds)]


def row(page: Page, study_uid: str) -> "object":
    return page.locator(f'tr[data-study-uid="{study_uid}"]')


def test_worklist_live_order_badges_and_screenshots(node: InProcessNode, tmp_path: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 700})
            page.set_default_timeout(TIMEOUT_MS)
            base = f"http://127.0.0.1:{node.http_port}"
            page.goto(f"{base}/")
            assert page.url.startswith(f"{base}/login"), "an unauthenticated page must send the browser to /login"
            page.fill("input[name=username]", "rita")
            page.fill("input[name=password]", "reader-password")
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/")
            expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))  # the event stream is open
            page.evaluate("window.__same_document = true")  # gone if the page reloads

            # the study without findings arrives first, then one the AI fails on, the malignant one last
            plain_uid, plain = study_files(tmp_path, "plain", "Knee, 2 views", "SYN-0101")
            failing_uid, failing = study_files(tmp_path, "failing", "Hip, fail", "SYN-0103")
            lesion_uid, lesion = study_files(tmp_path, "lesion", "Femur lesion follow-up", "SYN-0102")
            assert storescu(node.port, plain).returncode == 0
            expect(page.locator(f'tr[data-study-uid="{plain_uid}"] .badge')).to_have_text("no finding")
            assert storescu(node.port, failing).returncode == 0
            failed_row = page.locator(f'tr[data-study-uid="{failing_uid}"]')
            expect(failed_row.locator(".badge")).to_have_text("failed")
            expect(failed_row.locator(".reason")).to_contain_text("the test's pipeline fails on purpose")
            assert storescu(node.port, lesion).returncode == 0
            expect(page.locator(f'tr[data-study-uid="{lesion_uid}"] .badge')).to_have_text("urgent")

            uids = page.locator("#rows tr").evaluate_all("rows => rows.map(r => r.dataset.studyUid)")
            # the malignant study above the ones with none, whatever the arrival order; the failed one stays listed
            assert uids == [lesion_uid, plain_uid, failing_uid]
            lesion_row = page.locator(f'tr[data-study-uid="{lesion_uid}"]')
            expect(lesion_row.locator(".finding")).to_contain_text("Malignant neoplasm, primary")
            expect(lesion_row.locator(".finding")).to_contain_text("p = 0.87; lesion-if-described 1.0")
            expect(lesion_row.locator(".patient")).to_contain_text("SYN-0102")
            assert page.evaluate("window.__same_document") is True, "the rows must update without a reload"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "worklist.png"), full_page=True)

            lesion_row.locator("a", has_text="open").click()
            page.wait_for_url(f"{base}/study/{lesion_uid}")
            overlay = page.locator(".overlays img").first
            expect(overlay).to_be_visible()
            assert overlay.evaluate("img => img.complete && img.naturalWidth > 0"), "the overlay PNG must load"
            expect(page.locator("table.findings")).to_contain_text("lesion 1")
            expect(page.locator("a.viewer")).to_have_attribute(
                "href", f"http://viewer.example/viewer?StudyInstanceUIDs={lesion_uid}")
            assert "SYN-0102" not in page.content(), "the patient's ID belongs on the worklist only"
            page.screenshot(path=str(SCREENSHOTS / "study.png"), full_page=True)
        finally:
            browser.close()
