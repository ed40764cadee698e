"""A small synthetic chest CT with findings made from its true nodules, as a 3D pipeline returns them: the results
tests (tests/unit/test_results_3d.py) and the viewer test (tests/viewer/test_ohif_ct.py) build their objects on it.

The CT is devtools.synthetic.chest_ct_io's (SMALL_GRID, 128 x 128 x 64), written to a folder and read back with
pipelines.common.volume, which places each nodule's box on the slice through its centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import generate_uid

from devtools.synthetic.chest_ct import SMALL_GRID, ChestCase, generate_case
from devtools.synthetic.chest_ct_io import case_datasets
from pipelines.base import CodedClass, Finding, PatientBox, PipelineResult, PixelBox
from pipelines.common.volume import Volume, load_volume

IAC = CodedClass("1", "99CTTEST", "Invasive adenocarcinoma")  # the test's own class code
PIPELINE, VERSION = "chest-ct-nodule", "0.1.0"
# dciodvfy on the class code: a 99-prefixed private scheme of the tests (dciodvfy does not read its declaration).
PRIVATE_SCHEME_WARNING = "Unrecognized defined term <99CTTEST>"


@dataclass(frozen=True)
class CtCase:
    case: ChestCase
    slices: list[Dataset]
    volume: Volume
    result: PipelineResult

    def slice_of(self, sop_instance_uid: str) -> Dataset:
        (found,) = [ds for ds in self.slices if ds.SOPInstanceUID == sop_instance_uid]
        return found


def nodule_finding(volume: Volume, box: PatientBox, n: int, sop_class_uid: str) -> Finding:
    """A finding as a 3D pipeline makes it: the box in LPS mm, and its axial cross-section on the source slice nearest
    to its centre (``Volume.patient_to_source``)."""
    cx, cy, cz = box.centre
    (centre,) = volume.patient_to_source([(cx, cy, cz)])
    a, b = volume.patient_to_source([(box.x0, box.y0, cz), (box.x1, box.y1, cz)])
    return Finding(
        tracking_uid=generate_uid(entropy_srcs=[box.frame_of_reference_uid, str(n)]),
        tracking_id=f"nodule {n}",
        class_code=IAC,
        probability=0.74,
        class_probabilities={IAC.meaning: 0.74},
        detection_score=0.93,
        sop_instance_uid=centre.sop_instance_uid,
        sop_class_uid=sop_class_uid,
        frame_number=1,
        box=PixelBox(min(a.column, b.column), min(a.row, b.row), max(a.column, b.column), max(a.row, b.row)),
        inputs_used=("image", "labs:2039-6"),
        inputs_missing=("notes",),
        volume_box=box,
    )


def ct_case(folder: Path) -> CtCase:
    """Cohort seed 0, patient 3: two nodules, 22-28 mm, on different slices; the series is written to ``folder``."""
    case = generate_case(0, 3, SMALL_GRID, min_nodules=1)
    slices = case_datasets(case)
    for ds in slices:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    volume = load_volume([folder])
    findings = tuple(
        nodule_finding(volume, PatientBox(volume.frame_of_reference_uid, *nodule.box), n, str(slices[0].SOPClassUID))
        for n, nodule in enumerate(case.nodules, start=1)
    )
    result = PipelineResult(
        pipeline_name=PIPELINE, pipeline_version=VERSION, findings=findings,
        images_analysed=tuple(str(ds.SOPInstanceUID) for ds in slices), detection_threshold=0.3,
        inputs_missing=("notes",), fhir_status="ok", device="cpu",
    )
    return CtCase(case, slices, volume, result)
