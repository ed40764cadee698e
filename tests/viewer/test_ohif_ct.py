"""A 3D finding's SR as a radiologist sees it in OHIF Viewer 3.13.2: the box on the slice through the nodule's
centre, drawn from the SR's image-referenced SCOORD, with the TID 1411 volume group (SCOORD3D ELLIPSOID) beside it.

The CT is the small synthetic chest CT of tests/support/ct_case.py, its SR built by node.results.sr and both
uploaded to Orthanc; OHIF reads them through its DICOMweb as in test_ohif.py (whose page probes this reuses).
"""

from __future__ import annotations

from typing import Any

import pytest
from ct_case import IAC, CtCase, ct_case
from pydicom.uid import generate_uid
from test_ohif import (  # noqa: F401  (fixtures: browser, viewer, pacs)
    _SR_ANNOTATIONS,
    _TRACKED,
    Session,
    _bbox,
    _close,
    _sop_of,
    browser,
    pacs,
    session,
    viewer,
)

from node.localpeers.ohif import OhifViewer
from node.localpeers.orthanc import Orthanc
from node.results.sr import build_sr
from node.results.sr3d import long_axis_mm
from node.worker import SR_SERIES_NUMBER

pytestmark = [pytest.mark.integration, pytest.mark.viewer]


@pytest.fixture(scope="module")
def ct_study(pacs: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> CtCase:  # noqa: F811
    folder = tmp_path_factory.mktemp("ct-sr")
    ct = ct_case(folder)
    for ds in ct.slices:
        pacs.upload(folder / f"{ds.SOPInstanceUID}.dcm")  # as ct_case wrote it
    sr = build_sr(ct.result, ct.slices, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
                  series_number=SR_SERIES_NUMBER, manufacturer="dicom-ai-node", software_version="0.1.0")
    sr.save_as(folder / "sr.dcm", enforce_file_format=True)
    pacs.upload(folder / "sr.dcm")
    return ct


def test_ct_sr_draws_each_nodule_on_its_centre_slice_and_tracks_it(
    session: Session, viewer: OhifViewer, ct_study: CtCase  # noqa: F811
) -> None:
    study_uid = str(ct_study.slices[0].StudyInstanceUID)
    findings = ct_study.result.findings
    measurements = session.open_sr(viewer, study_uid)
    # one measurement per finding: its three groups merged by Tracking UID
    assert [m["uid"] for m in measurements] == [f.tracking_uid for f in findings]
    annotations = {a["uid"]: a for a in session.page.evaluate(_SR_ANNOTATIONS)}
    for finding in findings:
        annotation = annotations[finding.tracking_uid]
        assert _sop_of(annotation["imageId"]) == finding.sop_instance_uid
        assert _close(_bbox(annotation["points"]), (finding.box.x0, finding.box.y0, finding.box.x1, finding.box.y1))
        assert finding.volume_box is not None
        # OHIF labels the box with every NUM of the finding's groups: the long axis too, in mm
        assert annotation["labels"] == [f"{IAC.meaning}: {finding.probability:.2f} 1",
                                        f"Certainty of Finding: {finding.detection_score:.2f} 1",
                                        f"Long axis: {long_axis_mm(finding.volume_box):.2f} mm", "363698007: Chest"]
    session.assert_no_trouble()
    session.page.locator("[data-cy=yes-hydrate-btn]").click()
    handle = session.page.wait_for_function(
        f"() => {{ const t = ({_TRACKED})(); return t.length === {len(findings)} ? t : null; }}"
    )
    tracked: list[dict[str, Any]] = handle.json_value()
    # tracked as the radiograph findings are: a RectangleROI at the box, on the centre slice
    for finding, measurement in zip(findings, tracked):
        assert measurement["tool"] == "RectangleROI" and _sop_of(measurement["imageId"]) == finding.sop_instance_uid
        assert _close(_bbox(measurement["points"]), (finding.box.x0, finding.box.y0, finding.box.x1, finding.box.y1))
    session.assert_no_trouble()
