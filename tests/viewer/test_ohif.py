"""Our SR as a radiologist sees it in OHIF Viewer 3 (the real @ohif/app 3.13.2 bundle from deploy/viewer, in
Debian's headless Chromium driven by Playwright), reading Orthanc (the PACS) through node/localpeers/ohif.py.

The SRs are the node's own: the in-process node with the shipped radiograph-lesion pipeline gets the demo study
from Orthanc (as a routing rule sends it) and a no-findings study with an undecodable instance from a modality
(storescu), and delivers its results to Orthanc. The tests read what the page drew (the SVG annotation layer,
mapped back to image pixels through cornerstone's viewport) and compare it with the SR read back from Orthanc.

OHIF 3.13.2's SR viewport opens on the image of the SR's first measurement, and its arrows only move within the
series on screen (each view of the demo study is a series of its own), so the findings on the other image are
checked as OHIF draws them once tracked, opened from its measurements panel.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from node.worker import SR_SERIES_NUMBER
from node.localpeers.ohif import OHIF_DIST, OhifViewer
from node.localpeers.orthanc import Orthanc
from node.results.sr import SrSummary, read_findings

from node_fakes import j2k_cr, write_cr
from peers import InProcessNode, results_in_orthanc, storescu, wait_for

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (deploy/setup.sh does)", allow_module_level=True)
if not (OHIF_DIST / "index.html").is_file():
    pytest.skip(f"OHIF's bundle missing at {OHIF_DIST}: bash deploy/setup.sh unpacks it (deploy/viewer/ohif.pin)",
                allow_module_level=True)

from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.viewer]

TOLERANCE_PX = 2.0
PAGE_TIMEOUT_MS = 60_000  # OHIF's first load parses a 17 MB bundle; CI has two cores

# Console errors that are not about the SR, each with the reason it is harmless. None so far: OHIF 3.13.2 on
# Orthanc logs no error for our studies and SRs, and every new one should be read before it is allowed here.
HARMLESS_CONSOLE_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = ()

# --- page-side probes (cornerstone and OHIF's services, which OHIF exposes as window globals) ----------------

# OHIF's error and warning toasts disappear after a few seconds: they are recorded as they appear.
_RECORD_TOASTS = """
window.__toasts = [];
new MutationObserver(() => {
  for (const toast of document.querySelectorAll('[data-sonner-toast]')) {
    const type = toast.getAttribute('data-type');
    if ((type === 'error' || type === 'warning') && !toast.dataset.recorded) {
      toast.dataset.recorded = 'yes';
      window.__toasts.push(`${type}: ${toast.innerText}`);
    }
  }
}).observe(document, {subtree: true, childList: true, attributes: true});
"""

_IMAGE_SHOWN = """() => {
  const engine = window.cornerstone && window.cornerstone.getRenderingEngine('OHIFCornerstoneRenderingEngine');
  const viewport = engine && engine.getViewports()[0];
  try { return Boolean(viewport && viewport.getCurrentImageId() && viewport.getImageData()); } catch (e) { return false; }
}"""

_SR_STATE = """() => {
  const sr = window.services.displaySetService.getActiveDisplaySets().find(d => d.Modality === 'SR');
  if (!sr || !sr.isLoaded) return null;
  return sr.measurements.map(m => ({uid: m.TrackingUniqueIdentifier, loaded: m.loaded}));
}"""

# What the viewport shows now: the image (its SOP Instance UID), the boxes of the SVG annotation layer (the SR's
# polylines; a tracked RectangleROI's rect) in image pixel coordinates, and the lines of every annotation text box.
_DRAWN = """() => {
  const cs = window.cornerstone;
  const engine = cs.getRenderingEngine('OHIFCornerstoneRenderingEngine');
  const viewport = engine && engine.getViewports()[0];
  const imageId = viewport && viewport.getCurrentImageId && viewport.getCurrentImageId();
  const svg = document.querySelector('svg.svg-layer');
  if (!imageId || !svg) return null;
  const toImage = (x, y) => cs.utilities.worldToImageCoords(imageId, viewport.canvasToWorld([x, y]));
  const polylines = [...svg.querySelectorAll('polyline')].map(p => {
    const n = p.getAttribute('points').trim().split(/[\\s,]+/).map(Number);
    const points = [];
    for (let i = 0; i + 1 < n.length; i += 2) points.push(toImage(n[i], n[i + 1]));
    return points;
  });
  const rects = [...svg.querySelectorAll('rect')].map(r => {
    const [x, y, w, h] = ['x', 'y', 'width', 'height'].map(a => Number(r.getAttribute(a)));
    return [toImage(x, y), toImage(x + w, y), toImage(x + w, y + h), toImage(x, y + h)];
  });
  const texts = [...svg.querySelectorAll('g[data-annotation-uid] text')]
    .map(t => [...t.querySelectorAll('tspan')].map(s => s.textContent));
  return {imageId, polylines, rects, texts};
}"""

# The SR's annotations OHIF placed (cornerstone's annotation state), whichever image is on screen.
_SR_ANNOTATIONS = """() => window.cornerstoneTools.annotation.state.getAllAnnotations()
  .filter(a => a.metadata.toolName === 'DICOMSRDisplay')
  .map(a => ({
    uid: a.data.TrackingUniqueIdentifier,
    imageId: a.metadata.referencedImageId,
    points: a.data.renderableData.POLYLINE[0].map(p =>
      window.cornerstone.utilities.worldToImageCoords(a.metadata.referencedImageId, p)),
    labels: a.data.labels.map(l => `${l.label}: ${l.value}`),
  }))"""

_TRACKED = """() => {
  const cs = window.cornerstone;
  return window.services.measurementService.getMeasurements().map(m => ({
    uid: m.uid,
    tool: m.toolName,
    imageId: m.referencedImageId,
    points: m.points.map(p => cs.utilities.worldToImageCoords(m.referencedImageId, p)),
  }));
}"""


def _labels(finding: Any) -> list[str]:
    """What OHIF writes beside a finding's box: each NUM's name and value, then the Finding Site (OHIF names it by
    its concept's code value, SCT 363698007 "Finding site")."""
    labels = [f"{finding.class_meaning}: {finding.probability:.2f} 1",
              f"Certainty of Finding: {finding.detection_score:.2f} 1"]
    if finding.finding_site is not None:
        labels.append(f"363698007: {finding.finding_site.meaning}")
    return labels


def _sop_of(image_id: str) -> str:
    found = re.search(r"/instances/([0-9.]+)/frames/", image_id)
    assert found, f"not a WADO-RS frame image id: {image_id}"
    return found.group(1)


def _bbox(points: list[list[float]]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) <= TOLERANCE_PX for x, y in zip(a, b, strict=True))


# --- the studies, the node's results and the viewer -----------------------------------------------------------


@dataclass(frozen=True)
class Study:
    study_uid: str
    sr: SrSummary


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pacs: Orthanc) -> Iterator[InProcessNode]:
    from pipelines.registry import load_pipeline

    running = InProcessNode(tmp_path_factory.mktemp("node"), pacs, load_pipeline("radiograph-lesion", device="cpu"),
                            quiet_seconds=1.0).start()
    yield running
    running.stop()


def _sr_of(node: InProcessNode, pacs: Orthanc, study_uid: str) -> SrSummary:
    wait_for(lambda: node.settled(study_uid), 120, "the node to deliver its results")
    (sr,) = results_in_orthanc(pacs, study_uid)["SR"]
    return read_findings(sr)


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory: pytest.TempPathFactory, pacs: Orthanc, node: InProcessNode) -> Study:
    """The demo study (two CR views, three lesions), sent by Orthanc to the node as a routing rule would."""
    from devtools.synthetic.cohort import write_demo_study

    case = write_demo_study(tmp_path_factory.mktemp("demo-study"))
    studies = {pacs.upload(path)["ParentStudy"] for path in case.files}
    pacs.send_to_modality("ainode", sorted(studies))
    sr = _sr_of(node, pacs, case.study_instance_uid)
    assert len(sr.findings) >= 2 and len({f.sop_instance_uid for f in sr.findings}) == 2, \
        "the demo study should give findings on both images (the shipped model's output changed?)"
    return Study(case.study_instance_uid, sr)


@pytest.fixture(scope="module")
def no_findings_study(tmp_path_factory: pytest.TempPathFactory, pacs: Orthanc, node: InProcessNode) -> Study:
    """A lesion-free synthetic case (cohort 11, patient 18) plus a JPEG 2000 CR whose codestream is garbled, sent
    by a modality to the node: no findings, one instance not analysed.

    Orthanc gets the two readable images (and the node's results) but not the garbled one: OHIF would fail to
    decode its thumbnail, an error about that image and not about the SR.
    """
    from devtools.synthetic.cohort import generate_case
    from devtools.synthetic.cohort_io import case_datasets

    folder = tmp_path_factory.mktemp("no-findings")
    images = case_datasets(generate_case(11, 17, n_images=2))
    readable = [write_cr(folder / f"{ds.SOPInstanceUID}.dcm", ds) for ds in images]
    garbled = j2k_cr(f"garbled-{uuid.uuid4()}", 3, "garbled")
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID"):
        setattr(garbled, keyword, images[0].get(keyword))
    bad = write_cr(folder / "garbled.dcm", garbled)
    for path in readable:
        pacs.upload(path)
    done = storescu(node.port, [*readable, bad], options=("-R", "-xv"))  # each file's own transfer syntax
    assert done.returncode == 0, done.stderr
    study_uid = str(images[0].StudyInstanceUID)
    sr = _sr_of(node, pacs, study_uid)
    assert sr.nothing_found and sr.findings == (), "the lesion-free case should give no findings"
    assert [e.sop_instance_uid for e in sr.instances_excluded] == [str(garbled.SOPInstanceUID)]
    return Study(study_uid, sr)


@pytest.fixture(scope="module")
def viewer(pacs: Orthanc) -> Iterator[OhifViewer]:
    with OhifViewer(f"{pacs.url}/dicom-web") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # Playwright's own browser build cannot be downloaded here; Debian's Chromium is the one CI has.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


class Session:
    """One OHIF page with what went wrong on it: console errors, uncaught exceptions, requests leaving the viewer."""

    def __init__(self, page: Page, viewer: OhifViewer) -> None:
        self.page = page
        self.errors: list[str] = []
        self.outside: list[str] = []
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.add_init_script(_RECORD_TOASTS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", lambda request: self._request(request, viewer.url))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(p.search(message.text) for p, _ in HARMLESS_CONSOLE_ERRORS):
            self.errors.append(message.text[:500])

    def _request(self, request: Request, origin: str) -> None:
        if not request.url.startswith((origin + "/", "data:", "blob:")):
            self.outside.append(request.url)

    def open_sr(self, viewer: OhifViewer, study_uid: str) -> list[dict[str, Any]]:
        """Open the study as a user does and double-click the SR's thumbnail; the SR's measurements once loaded."""
        self.page.goto(viewer.study_url(study_uid))
        # As a user does: the first image is on screen before the SR replaces it (OHIF fails on a stack viewport
        # taken away while its image is still loading: "Cannot read properties of null (reading 'getViewUp')").
        self.page.wait_for_function(_IMAGE_SHOWN)
        # the SR's series (the GSPS, series 9904, has a thumbnail without image too)
        self.page.locator(f"[data-cy=study-browser-thumbnail-no-image][data-series='{SR_SERIES_NUMBER}']").dblclick()
        handle = self.page.wait_for_function(_SR_STATE)
        state: list[dict[str, Any]] = handle.json_value()
        return state

    def drawn(self, sop_instance_uid: str, boxes: int, shape: str) -> dict[str, Any]:
        """What the viewport shows once it shows ``sop_instance_uid`` with ``boxes`` boxes of ``shape`` (the SVG
        element: "polylines" for the SR's own display, "rects" for tracked measurements)."""
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            last = self.page.evaluate(_DRAWN)
            if (last and _sop_of(last["imageId"]) == sop_instance_uid and len(last[shape]) == boxes
                    and len(last["texts"]) == boxes):
                return last
            self.page.wait_for_timeout(200)
        raise AssertionError(f"the viewport never showed {boxes} {shape} on the expected image; last seen: {last}")

    def assert_no_trouble(self) -> None:
        body = self.page.inner_text("body")
        assert "Something went wrong" not in body
        assert self.page.evaluate("() => window.__toasts") == []
        assert self.errors == [], "\n".join(self.errors)
        assert self.outside == [], f"OHIF called out of the viewer's origin: {self.outside}"


@pytest.fixture()
def session(browser: Browser, viewer: OhifViewer) -> Iterator[Session]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield Session(context.new_page(), viewer)
    context.close()


# --- the tests -----------------------------------------------------------------------------------------------


def test_every_finding_is_drawn_on_its_image_labelled_and_can_be_tracked(
    session: Session, viewer: OhifViewer, demo_study: Study
) -> None:
    findings = demo_study.sr.findings
    started = time.monotonic()
    measurements = session.open_sr(viewer, demo_study.study_uid)
    # One OHIF measurement per finding (OHIF merges a finding's two groups by Tracking UID), each placed on an image.
    assert [m["uid"] for m in measurements] == [f.tracking_uid for f in findings]
    assert all(m["loaded"] for m in measurements), measurements

    # Every finding's annotation: on its image, at its box, labelled with class and probability.
    annotations = {a["uid"]: a for a in session.page.evaluate(_SR_ANNOTATIONS)}
    for finding in findings:
        annotation = annotations[finding.tracking_uid]
        assert _sop_of(annotation["imageId"]) == finding.sop_instance_uid
        assert _close(_bbox(annotation["points"]), finding.box), (finding.box, annotation["points"])
        assert annotation["labels"] == _labels(finding)

    # What the SR viewport drew on the first finding's image: each box there, closed, with its label beside it.
    first_image = findings[0].sop_instance_uid
    on_screen = [f for f in findings if f.sop_instance_uid == first_image]
    drawn = session.drawn(first_image, boxes=len(on_screen), shape="polylines")
    for polyline in drawn["polylines"]:
        assert len(polyline) == 5 and _close(tuple(polyline[0][:2]), tuple(polyline[-1][:2])), "a closed box"
    drawn_boxes = [_bbox(points) for points in drawn["polylines"]]
    for finding in on_screen:
        assert len([b for b in drawn_boxes if _close(b, finding.box)]) == 1, (finding.box, drawn_boxes)
        label = _labels(finding)
        assert label in drawn["texts"], f"{finding.tracking_id}: {label} not among {drawn['texts']}"
    session.assert_no_trouble()

    # Tracking: OHIF asks, the user says yes, and every finding becomes a measurement of its own...
    session.page.locator("[data-cy=yes-hydrate-btn]").click()
    handle = session.page.wait_for_function(
        f"() => {{ const t = ({_TRACKED})(); return t.length === {len(findings)} ? t : null; }}"
    )
    tracked: list[dict[str, Any]] = handle.json_value()
    assert {t["tool"] for t in tracked} == {"RectangleROI"}
    # ... listed in the measurements panel; a click on each shows it on its image, drawn at the SR's box.
    session.page.locator("[data-cy=trackedMeasurements-btn]").click()
    seen: set[tuple[str, tuple[float, float, float, float]]] = set()
    for row, measurement in enumerate(tracked):  # the panel lists OHIF's measurements in their order
        session.page.locator(f"[data-cy=measurement-table-row-{row}] [data-cy=data-row-title]").click()
        session.page.wait_for_function(
            "uid => window.cornerstoneTools.annotation.selection.getAnnotationsSelected().includes(uid)",
            arg=measurement["uid"],
        )
        sop = _sop_of(measurement["imageId"])
        drawn = session.drawn(sop, boxes=sum(_sop_of(t["imageId"]) == sop for t in tracked), shape="rects")
        seen |= {(sop, _bbox(rect)) for rect in drawn["rects"]}
    for finding in findings:
        hits = [box for sop, box in seen if sop == finding.sop_instance_uid and _close(box, finding.box)]
        assert len(hits) == 1, f"{finding.tracking_id} at {finding.box} not drawn once tracked: {seen}"
    session.assert_no_trouble()
    print(f"OHIF: {len(findings)} findings drawn, labelled and tracked in {time.monotonic() - started:.1f} s")


def test_no_findings_sr_with_an_instance_not_analysed_opens_without_error(
    session: Session, viewer: OhifViewer, no_findings_study: Study
) -> None:
    measurements = session.open_sr(viewer, no_findings_study.study_uid)
    assert measurements == []
    # OHIF shows a report without measurements as text: the statements a reader needs are there.
    pane = session.page.locator("[data-cy=viewport-pane]")
    pane.get_by_text("Qualitative Evaluations").wait_for()
    text = pane.inner_text()
    for statement in ("Absent", "EHR unreachable", "Pixel data cannot be decoded"):
        assert statement in text, f"{statement!r} not shown: {text}"
    assert session.page.locator("svg.svg-layer polyline").count() == 0
    session.assert_no_trouble()
