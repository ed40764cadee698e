"""fetch_context against the real FHIR engine (Medplum's FhirRouter + MemoryRepository, deploy/fhir/server.mjs)."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Iterator

import pytest

from node.config import FhirSettings
from node.context import fetch_context
from node.localpeers.fhir import FhirEngine
from pipelines.base import LabRequirement, PipelineRequirements, SeriesFilter

pytestmark = pytest.mark.integration

MRN_SYSTEM = "urn:dicom-ai-node:synthetic-mrn"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
NOTE = "Known breast cancer, on follow-up. Back pain for 3 weeks."

REQUIREMENTS = PipelineRequirements(
    modalities=("CR", "DX"),
    series_filter=SeriesFilter(),
    labs=(
        LabRequirement("6768-6", "ALP", "U/L"),
        LabRequirement("2532-0", "LDH", "U/L"),
        LabRequirement("17861-6", "Calcium", "mg/dL"),
        LabRequirement("1988-5", "CRP", "mg/L"),
        LabRequirement("2951-2", "Sodium", "mmol/L"),  # never recorded: must come back absent
    ),
    reads_notes=True,
    dimensionality=2,
)


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _observation(patient: str, loinc: str, value: float, unit: str, when: str) -> dict[str, Any]:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": patient},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    return {"fullUrl": _urn(), "resource": resource, "request": {"method": "POST", "url": "Observation"}}


def _bundle() -> dict[str, Any]:
    patient = _urn()
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient,
            "resource": {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": "SYN-0001"}], "gender": "female"},
            "request": {"method": "POST", "url": "Patient"},
        },
        _observation(patient, "6768-6", 310.0, "U/L", "2024-03-01T09:00:00Z"),
        _observation(patient, "6768-6", 999.0, "U/L", "2024-03-20T09:00:00Z"),  # after the study: ignored
        _observation(patient, "2532-0", 280.0, "U/L", "2024-02-20T09:00:00Z"),
        _observation(patient, "17861-6", 10.9, "mg/dL", "2024-03-01T09:00:00Z"),
        # The only CRP in the window is older than 20 ALP values: found only by following `next` links.
        _observation(patient, "1988-5", 12.5, "mg/L", "2023-04-01T09:00:00Z"),
        _observation(patient, "1988-5", 3.0, "mg/L", "2022-01-01T09:00:00Z"),  # outside the 365-day window
    ]
    # An ALP history longer than the engine's page of 20.
    entries += [_observation(patient, "6768-6", 100.0 + month, "U/L", f"2023-{month:02d}-15T09:00:00Z") for month in range(4, 13)]
    entries += [_observation(patient, "6768-6", 90.0 + day, "U/L", f"2024-01-{day:02d}T09:00:00Z") for day in range(1, 20)]
    entries.append(
        {
            "fullUrl": _urn(),
            "resource": {
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": {"reference": patient},
                "date": "2024-03-02T10:00:00Z",
                "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(NOTE.encode()).decode()}}],
            },
            "request": {"method": "POST", "url": "DocumentReference"},
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture(scope="module")
def engine() -> Iterator[FhirEngine]:
    with FhirEngine() as ehr:
        print(f"FHIR engine started in {ehr.startup_seconds:.2f} s")
        response = ehr.post_bundle(_bundle())
        assert response["type"] == "transaction-response"
        yield ehr


def test_fetch_context_reads_labs_and_note(engine: FhirEngine) -> None:
    settings = FhirSettings(base_url=engine.base_url, patient_identifier_system=MRN_SYSTEM)
    context = fetch_context(settings, "SYN-0001", "20240315", REQUIREMENTS)
    assert context.fhir_status == "ok", context.detail
    assert {loinc: (v.value, v.unit) for loinc, v in context.labs.items()} == {
        "6768-6": (310.0, "U/L"),
        "2532-0": (280.0, "U/L"),
        "17861-6": (10.9, "mg/dL"),
        "1988-5": (12.5, "mg/L"),
    }
    assert context.labs["6768-6"].effective == "2024-03-01T09:00:00Z"
    assert context.notes == (NOTE,)


def test_study_before_the_latest_values_sees_the_earlier_ones(engine: FhirEngine) -> None:
    settings = FhirSettings(base_url=engine.base_url, patient_identifier_system=MRN_SYSTEM)
    context = fetch_context(settings, "SYN-0001", "20240110", REQUIREMENTS)
    assert context.fhir_status == "ok", context.detail
    assert context.labs["6768-6"].value == 100.0  # 2024-01-10
    assert "2532-0" not in context.labs
    assert context.notes == ()  # the note is dated after the study


def test_unknown_patient(engine: FhirEngine) -> None:
    settings = FhirSettings(base_url=engine.base_url, patient_identifier_system=MRN_SYSTEM)
    assert fetch_context(settings, "SYN-9999", "20240315", REQUIREMENTS).fhir_status == "patient-not-found"


def test_stopped_engine_is_unreachable_quickly() -> None:
    with FhirEngine() as ehr:
        settings = FhirSettings(base_url=ehr.base_url, patient_identifier_system=MRN_SYSTEM, timeout_seconds=2.0)
    started = time.monotonic()
    context = fetch_context(settings, "SYN-0001", "20240315", REQUIREMENTS)
    assert context.fhir_status == "unreachable"
    assert "SYN-0001" not in context.detail
    assert time.monotonic() - started < 1.0
