"""Results written where worklists read them, through the real node (in-process: listener, assembler, worker,
outbox) with Orthanc as the PACS, Medplum's FHIR engine as a ``fhir`` destination and the test's own MLLP receiver
(hl7apy's server) as an ``hl7-mllp`` destination. A study sent with storescu, on which the test's pipeline finds a
likely malignant lesion, becomes an urgent FHIR Task on the order and a DiagnosticReport with its Observation, read
back over HTTP and validated with fhir.resources, and an ORU^R01 that hl7apy parses, flagged AA. Sending the SR
again, and the study's re-processing after a new image arrives (an amended SR), update the same Task and report;
the finding the amendment no longer states is withdrawn (entered-in-error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.task import Task
from pydicom import dcmread
from typer.testing import CliRunner

from mllp_listener import MllpListener
from node.cli import app
from node.delivery import open_destination
from node.localpeers.fhir import FhirEngine
from node.localpeers.orthanc import Orthanc
from node_fakes import cr_dataset, uid, write_cr
from peers import InProcessNode, storescu, wait_for
from pipelines.base import (
    ClinicalContext, Finding, PipelineRequirements, PipelineResult, PixelBox, SeriesFilter, StudyInput,
)
from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION_CLASSES

pytestmark = pytest.mark.integration

MRN_SYSTEM = "urn:dicom-ai-node:synthetic-mrn"
MALIGNANT = RADIOGRAPH_LESION_CLASSES[2]  # SCT 86049000: the default priority rules make a likely one urgent


class LesionOnLastImage:
    """A likely malignant lesion in the middle of the study's last image (no torch: the test is about delivery), so
    a new image moves the finding: the amended report states one finding and withdraws the other."""

    name = "lesion-on-last"
    version = "1.0"
    requirements = PipelineRequirements(modalities=("CR",), series_filter=SeriesFilter(), labs=(), reads_notes=False,
                                        dimensionality=2)

    def run(self, study: StudyInput, context: ClinicalContext) -> PipelineResult:
        findings = []
        for n, ref in enumerate(study.instances[-1:], start=1):
            rows = int(dcmread(ref.path, stop_before_pixels=True).Rows)
            findings.append(Finding(
                tracking_uid=uid(ref.sop_instance_uid, "finding"), tracking_id=f"lesion {n}", class_code=MALIGNANT,
                probability=0.87, class_probabilities={MALIGNANT.meaning: 0.87}, detection_score=0.9,
                sop_instance_uid=ref.sop_instance_uid, sop_class_uid=ref.sop_class_uid, frame_number=1,
                box=PixelBox(rows / 4, rows / 4, rows / 2, rows / 2), inputs_used=("image",), inputs_missing=(),
            ))
        return PipelineResult(
            pipeline_name=self.name, pipeline_version=self.version, findings=tuple(findings),
            images_analysed=tuple(r.sop_instance_uid for r in study.instances), detection_threshold=0.5,
            inputs_missing=(), fhir_status=context.fhir_status, device="cpu",
        )


def search(ehr: FhirEngine, resource_type: str, **params: str) -> list[Any]:
    """Every match of a search, each validated with fhir.resources (R4B) as it came over HTTP."""
    response = httpx.get(f"{ehr.base_url}/{resource_type}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    bundle = Bundle.model_validate(response.json())
    return [entry.resource for entry in bundle.entry or []]


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Orthanc, FhirEngine, MllpListener]]:
    with Orthanc(workdir=tmp_path / "orthanc") as pacs, FhirEngine() as ehr, MllpListener() as ris:
        yield pacs, ehr, ris


def test_task_report_and_oru_reach_the_worklists_once(tmp_path: Path,
                                                      peers: tuple[Orthanc, FhirEngine, MllpListener]) -> None:
    pacs, ehr, ris = peers
    # the EHR knows the patient and the order (by accession number), as a hospital's would
    created = ehr.post_bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6a3f3a3e-0d5e-4c47-9b8a-1f2e3d4c5b6a",
         "resource": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "SYN-0201"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                      "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                           "code": "ACSN"}]}, "value": "ACC1"}],
                      "code": {"text": "XR femur"}, "subject": {"reference": "urn:uuid:6a3f3a3e-0d5e-4c47-9b8a-1f2e3d4c5b6a"}},
         "request": {"method": "POST", "url": "ServiceRequest"}},
    ]})
    patient_ref, order_ref = (e["response"]["location"].split("/_history")[0] for e in created["entry"])
    node = InProcessNode(tmp_path / "node", pacs, LesionOnLastImage(), quiet_seconds=1.0, extra={"destination": [
        {"name": "ehr", "type": "fhir", "url": ehr.base_url, "patient_identifier_system": MRN_SYSTEM},
        {"name": "ris", "type": "hl7-mllp", "host": "127.0.0.1", "port": ris.port, "receiving_facility": "RADIOLOGY"},
    ]}).start()
    try:
        first = cr_dataset("worklist", 1, patient_id="SYN-0201", size=128)
        study_uid = str(first.StudyInstanceUID)
        assert storescu(node.port, [write_cr(tmp_path / "1.dcm", first)]).returncode == 0
        wait_for(lambda: node.settled(study_uid), 60, "the study's results to reach every destination")

        (task,) = search(ehr, "Task")
        assert isinstance(task, Task)
        assert (task.status, task.intent, task.priority) == ("requested", "order", "urgent")
        assert task.focus is not None and task.focus.reference == order_ref
        assert task.for_fhir is not None and task.for_fhir.reference == patient_ref
        assert task.reasonCode is not None and "Malignant neoplasm, primary 0.87" in str(task.reasonCode.text)
        (report,) = search(ehr, "DiagnosticReport")
        assert isinstance(report, DiagnosticReport)
        assert report.status == "final" and [c.code for c in report.code.coding or []] == ["18748-4"]
        assert report.subject is not None and report.subject.reference == patient_ref
        assert "AI priority: urgent" in str(report.conclusion)
        (observation,) = search(ehr, "Observation")
        assert isinstance(observation, Observation)
        assert [r.reference for r in report.result or []] == [f"Observation/{observation.id}"]
        assert [c.code for c in observation.code.coding or []] == ["86049000"]
        assert observation.valueQuantity is not None and observation.valueQuantity.value is not None
        assert float(observation.valueQuantity.value) == pytest.approx(0.87)
        assert [c.code for i in observation.interpretation or [] for c in i.coding or []] == ["AA"]
        (imaging_study,) = search(ehr, "ImagingStudy")
        assert imaging_study.identifier[0].value == f"urn:oid:{study_uid}"

        (oru,) = ris.messages
        order = oru.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
        assert oru.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.pid.pid_3.cx_1.to_er7() == "SYN-0201"
        assert order.orc.orc_7.to_er7() == "^^^^^A" and order.obr.obr_25.to_er7() == "F"
        flags = [o.obx.obx_8.to_er7() for o in order.ORU_R01_OBSERVATION if o.obx.obx_2.to_er7() == "NM"]
        assert flags == ["AA"]

        # a worklist takes the Task up; the same SR sent again (a retry after a lost answer) writes the same
        # resources and leaves the Task in progress
        taken = httpx.put(f"{ehr.base_url}/Task/{task.id}", timeout=10, headers={"Content-Type": "application/fhir+json"},
                          content=task.model_copy(update={"status": "in-progress"}).model_dump_json(exclude_none=True))
        assert taken.status_code == 200, taken.text
        sr_path = Path(node.store().outbox_items("sent", "ehr")[0]["path"])
        ehr_settings = next(d for d in node.settings.destinations if d.name == "ehr")
        assert open_destination(ehr_settings, "AINODE", node.settings.priority_rules).send([sr_path], 30)[0].ok
        assert [len(search(ehr, kind)) for kind in ("Task", "DiagnosticReport", "Observation")] == [1, 1, 1]
        assert search(ehr, "Task")[0].status == "in-progress"

        # a second image: the study is processed again; its amended SR updates the same Task and report, and the
        # finding it no longer states is withdrawn
        second = cr_dataset("worklist", 2, patient_id="SYN-0201", size=128)
        assert storescu(node.port, [write_cr(tmp_path / "2.dcm", second)]).returncode == 0
        wait_for(lambda: len(ris.received) == 2 and node.settled(study_uid), 60, "the amended results")
        (task,) = search(ehr, "Task")
        assert task.priority == "urgent" and task.status == "requested"  # the AI's result changed: read it again
        (report,) = search(ehr, "DiagnosticReport")
        assert report.status == "amended"
        by_status = {o.status: o for o in search(ehr, "Observation")}
        assert sorted(by_status) == ["amended", "entered-in-error"]
        assert by_status["entered-in-error"].id == observation.id
        assert [r.reference for r in report.result or []] == [f"Observation/{by_status['amended'].id}"]
        assert len(search(ehr, "ImagingStudy")) == 1
        amended = ris.messages[1].ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
        assert amended.obr.obr_25.to_er7() == "C"
        assert [o.obx.obx_8.to_er7() for o in amended.ORU_R01_OBSERVATION if o.obx.obx_2.to_er7() == "NM"] == ["AA"]

        # an operator sees both destinations' deliveries
        config = tmp_path / "node.toml"
        config.write_text(f'[node]\nae_title = "AINODE"\nport = {node.port}\n'
                          f'data_dir = "{node.settings.node.data_dir}"\n')
        listed = CliRunner().invoke(app, ["outbox", "list", "--state", "sent", "--config", str(config)])
        assert listed.exit_code == 0, listed.output
        sent = [line for line in listed.output.splitlines() if line.startswith("sent")]
        assert sum(" ehr/" in line for line in sent) == 2 and sum(" ris/" in line for line in sent) == 2
    finally:
        node.stop()
