"""Readers' feedback in Debian's headless Chromium (Playwright), against the in-process node (its real listener,
assembler, worker and web application, with Orthanc as the PACS): a reader dismisses a malignant finding as a false
positive with a reason, and the verdict survives a reload; the admin page's false-positive rate moves from none to
1 of 1 with its interval; acknowledging the result starts the worklist's "acknowledged" timer. The test writes the
screenshots of the study page with feedback and of the admin page (docs/screenshots/).

The pipeline is the test's own (no torch): one malignant finding on every image.
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

from node_fakes import cr_dataset, uid, write_cr
from peers import InProcessNode, storescu, wait_for

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (deploy/setup.sh does)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.viewer]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
MALIGNANT = RADIOGRAPH_LESION_CLASSES[2]
TIMEOUT_MS = 30_000
REASON = "nipple shadow, seen on the lateral view"


class AlwaysMalignant:
    """A malignant lesion in the middle of every image."""

    name = "always-malignant"
    version = "1.0"
    requirements = PipelineRequirements(modalities=("CR",), series_filter=SeriesFilter(), labs=(), reads_notes=False,
                                        dimensionality=2)

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        findings = tuple(Finding(
            tracking_uid=uid(ref.sop_instance_uid, "finding"), tracking_id="lesion 1", class_code=MALIGNANT,
            probability=0.87, class_probabilities={c.meaning: p for c, p in zip(RADIOGRAPH_LESION_CLASSES,
                                                                               (0.05, 0.08, 0.87))},
            detection_score=0.9, sop_instance_uid=ref.sop_instance_uid, sop_class_uid=ref.sop_class_uid,
            frame_number=1, box=PixelBox(32, 32, 64, 64), inputs_used=("image",), inputs_missing=(),
        ) for ref in study.instances)
        return PipelineResult(
            pipeline_name=self.name, pipeline_version=self.version, findings=findings,
            images_analysed=tuple(r.sop_instance_uid for r in study.instances), detection_threshold=0.5,
            inputs_missing=(), fhir_status=context.fhir_status, device="cpu",
        )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as pacs:
        running = InProcessNode(tmp_path_factory.mktemp("node"), pacs, AlwaysMalignant(), quiet_seconds=1.0).start()
        store = running.store()
        store.add_user("rita", hash_password("reader-password"), "reader")
        store.add_user("adam", hash_password("admin-password"), "admin")
        store.close()
        yield running
        running.stop()


def logged_in(browser: Browser, base: str, username: str, password: str) -> Page:
    page = browser.new_context(viewport={"width": 1400, "height": 800}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page


@pytest.mark.timeout(90)
def test_dismiss_survives_reload_moves_the_rate_and_acknowledge_starts_the_timer(node: InProcessNode,
                                                                                  tmp_path: Path) -> None:
    ds = cr_dataset("feedback", 1, patient_id="SYN-0201", size=128)
    ds.StudyDescription = "Chest, lesion follow-up"
    study_uid = str(ds.StudyInstanceUID)
    assert storescu(node.port, [write_cr(tmp_path / "feedback.dcm", ds)]).returncode == 0
    wait_for(lambda: node.settled(study_uid), 60, "the study's AI result")
    base = f"http://127.0.0.1:{node.http_port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            admin = logged_in(browser, base, "adam", "admin-password")
            admin.goto(f"{base}/admin")
            expect(admin.locator("table.feedback-rates")).to_contain_text("No feedback on AI findings yet.")

            reader = logged_in(browser, base, "rita", "reader-password")
            row = reader.locator(f'tr[data-study-uid="{study_uid}"]')
            expect(row.locator(".finding")).to_contain_text("Malignant neoplasm, primary")
            row.locator("a", has_text="open").click()
            reader.wait_for_url(f"{base}/study/{study_uid}")
            finding = reader.locator("table.findings tr[data-finding-id]", has_text="lesion 1")
            finding.locator("input[name=reason]").fill(REASON)
            finding.get_by_role("button", name="Dismiss as false positive").click()
            reader.wait_for_url(f"{base}/study/{study_uid}#feedback")
            reader.reload()
            verdict = reader.locator("table.findings tr[data-finding-id] .verdict")
            expect(verdict).to_contain_text("Dismissed as false positive by rita")
            expect(verdict.locator(".reason")).to_have_text(REASON)

            reader.get_by_role("button", name="Acknowledge AI result").click()
            expect(reader.locator(".acknowledged")).to_contain_text("AI result acknowledged by rita")
            expect(reader.get_by_role("button", name="Acknowledge AI result")).to_have_count(0)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            reader.screenshot(path=str(SCREENSHOTS / "study-feedback.png"), full_page=True)
            reader.goto(f"{base}/")
            expect(row.locator(".timers")).to_contain_text(re.compile(r"acknowledged \d+ s after"))

            admin.reload()
            rate = admin.locator('table.feedback-rates tr[data-pipeline="always-malignant"]')
            expect(rate.locator(".fp-rate")).to_have_text("1 of 1 (100%; 95% CI 21-100%)")
            expect(rate.locator(".confirmation-rate")).to_have_text("0 of 1 (0%; 95% CI 0-79%)")
            admin.screenshot(path=str(SCREENSHOTS / "admin-feedback.png"), full_page=True)
        finally:
            browser.close()
