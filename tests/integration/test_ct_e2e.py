"""A chest CT study end to end: a 512 x 512 x ~200 phantom series sent by dcmtk storescu to the node, the shipped
chest-ct-nodule pipeline on the CPU with tumour markers and a note from Medplum's FHIR engine, and an SR with 3D
findings (SCOORD3D in the frame of reference, SCOORD on the slice through each nodule) plus SC slices in Orthanc.
Real CT from pydicom-data that is not chest is not analysed by it, and the status or the SR says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import highdicom as hd
import pytest
from pydicom import Dataset, dcmread

from devtools.synthetic.chest_ct import generate_case
from devtools.synthetic.chest_ct_io import fhir_bundle, write_case
from node.localpeers.fhir import FhirEngine
from node.localpeers.orthanc import Orthanc
from node.results.sr import read_findings

from dicom_validation import dciodvfy, errors
from peers import NodeProcess, results_in_orthanc, storescu, wait_for

pytestmark = pytest.mark.integration

CASE_SEED, CASE_INDEX = 3, 11  # 512 x 512 x 224 slices of 1.25 mm, one 26 mm nodule (the shipped detector misses most < 8 mm)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Path], dict[str, Any]]:
    case = generate_case(CASE_SEED, CASE_INDEX, min_nodules=1)
    folder, _ = write_case(case, tmp_path_factory.mktemp("ct"))
    return case, sorted(folder.glob("*.dcm")), fhir_bundle(case)


@pytest.fixture(scope="module")
def fhir(study: tuple[Any, list[Path], dict[str, Any]]) -> Iterator[FhirEngine]:
    with FhirEngine() as engine:
        engine.post_bundle(study[2])
        yield engine


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with Orthanc(workdir=tmp_path_factory.mktemp("orthanc")) as orthanc:
        yield orthanc


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pacs: Orthanc, fhir: FhirEngine) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("node"), pacs, fhir.base_url).start()
    yield proc
    proc.stop()


def _items(ds: Dataset) -> Iterator[Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _stored(pacs: Orthanc, ds: Dataset, path: Path) -> Path:
    path.write_bytes(pacs.instance_file(pacs.find_instance(ds.SOPInstanceUID) or ""))
    return path


def test_a_chest_ct_study_gets_3d_findings_and_sc_slices_in_orthanc(
    node: NodeProcess, pacs: Orthanc, study: tuple[Any, list[Path], dict[str, Any]], tmp_path: Path
) -> None:
    case, files, _ = study
    first = dcmread(files[0], stop_before_pixels=True)
    study_uid, frame_of_reference = str(first.StudyInstanceUID), str(first.FrameOfReferenceUID)
    slices = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert len(files) >= 112 and first.Rows == first.Columns == 512
    sent = storescu(node.port, files)
    assert sent.returncode == 0, sent.stderr
    found = wait_for(lambda: (r := results_in_orthanc(pacs, study_uid))["SR"] and r["SC"] and r, 240,
                     "an SR and SC slices in Orthanc")
    wait_for(lambda: node.study_status(study_uid) == "sent", 60, "the study to be 'sent'")
    found = results_in_orthanc(pacs, study_uid)
    assert len(found["SR"]) == 1
    sr_file = _stored(pacs, found["SR"][0], tmp_path / "sr.dcm")
    assert errors(dciodvfy(sr_file)) == []
    report = hd.sr.srread(sr_file)  # highdicom reads it back
    summary = read_findings(report)
    assert summary.algorithm_name == "chest-ct-nodule" and summary.fhir_status == "ok"
    assert set(summary.images_analysed) == slices, "every slice of the series analysed"
    assert len(summary.findings) >= 1
    assert {f.class_meaning for f in summary.findings} <= {
        "Adenocarcinoma in situ of the lung, non-mucinous", "Minimally invasive adenocarcinoma, non-mucinous",
        "Adenocarcinoma, NOS"}
    # each finding: a SCOORD3D region in the series' frame of reference, a SCOORD on one of its slices
    items = list(_items(report))
    scoord3d = [i for i in items if i.ValueType == "SCOORD3D"]
    scoord = [i for i in items if i.ValueType == "SCOORD"]
    assert len(scoord3d) >= len(summary.findings) and len(scoord) >= len(summary.findings)
    assert {str(i.ReferencedFrameOfReferenceUID) for i in scoord3d} == {frame_of_reference}
    for item in scoord:
        assert item.GraphicType == "POLYLINE" and list(item.GraphicData[:2]) == list(item.GraphicData[-2:])
        (image,) = [c for c in item.get("ContentSequence", []) if c.ValueType == "IMAGE"]
        assert str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) in slices
    # a true nodule's centre lies inside some finding's 3D region (the phantom's boxes are in LPS mm)
    boxes = [f.volume_box for f in summary.findings]
    assert all(b is not None for b in boxes)
    centres = [n.centre for n in case.nodules]
    assert any(b.x0 <= c[0] <= b.x1 and b.y0 <= c[1] <= b.y1 and b.z0 <= c[2] <= b.z1  # type: ignore[union-attr]
               for b in boxes for c in centres), "no finding covers a true nodule"
    # SC: the slices through the findings, boxes burned in; valid DICOM
    assert len(found["SC"]) == len({f.sop_instance_uid for f in summary.findings})
    for n, sc in enumerate(found["SC"]):
        assert errors(dciodvfy(_stored(pacs, sc, tmp_path / f"sc{n}.dcm"))) == []
    # the presentation state shows every slice in the bundle's lung window, whatever window the series states first
    (state,) = found["PR"]
    (voi,) = state.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth), voi.WindowCenterWidthExplanation) == (-600, 1500, "LUNG")


def test_real_ct_that_is_not_chest_is_not_analysed_by_the_chest_model_and_says_why(
    node: NodeProcess, pacs: Orthanc
) -> None:
    from pydicom.data import get_testdata_file

    head = get_testdata_file("J2K_pixelrep_mismatch.dcm")  # a real head CT slice (JPEG 2000), pydicom-data
    assert head is not None
    source = dcmread(head, stop_before_pixels=True)
    assert source.Modality == "CT" and source.BodyPartExamined == "HEAD"
    assert storescu(node.port, [Path(head)], options=("-xv",)).returncode == 0
    uid = str(source.StudyInstanceUID)
    wait_for(lambda: node.study_status(uid) == "no-pipeline", 60, "'no-pipeline'")
    study = [s for s in node.api_studies() if s["study_uid"] == uid][0]
    assert study["reason"] == "no routing rule matched (CT HEAD: 1 instance)"
    assert results_in_orthanc(pacs, uid)["SR"] == []

    # a CT slice without a body part is inside the intended use's header check, so it is routed; one slice is no
    # volume, and the SR says so instead of guessing
    small = get_testdata_file("CT_small.dcm")
    assert small is not None
    one = dcmread(small, stop_before_pixels=True)
    assert storescu(node.port, [Path(small)]).returncode == 0
    found = wait_for(lambda: (r := results_in_orthanc(pacs, str(one.StudyInstanceUID)))["SR"] and r, 120, "an SR")
    summary = read_findings(found["SR"][0])
    assert summary.findings == () and summary.images_analysed == ()
    (excluded,) = summary.instances_excluded
    assert excluded.sop_instance_uid == str(one.SOPInstanceUID) and excluded.reason == "series-unusable"
    assert excluded.detail.startswith("too-few-slices"), excluded.detail
