"""node.context against an in-process fake EHR (httpx.MockTransport): statuses, selection and parsing."""

from __future__ import annotations

import base64
import itertools
import json
import time
from typing import Any, Callable, Iterator

import httpx
import pytest

from node.config import FhirSettings
from node.context import fetch_context
from pipelines.base import LabRequirement, PipelineRequirements, SeriesFilter

BASE = "http://ehr.test/fhir/R4"
MRN_SYSTEM = "urn:dicom-ai-node:synthetic-mrn"
SETTINGS = FhirSettings(base_url=BASE, patient_identifier_system=MRN_SYSTEM, lab_window_days=365, timeout_seconds=1.0)
REQUIREMENTS = PipelineRequirements(
    modalities=("DX",),
    series_filter=SeriesFilter(),
    labs=(LabRequirement("6768-6", "ALP", "U/L"), LabRequirement("2532-0", "LDH", "U/L")),
    reads_notes=True,
    dimensionality=2,
)
NOTE = "Back pain; history of breast cancer."

_ids = itertools.count(1)

Handler = Callable[[httpx.Request], httpx.Response]


def searchset(*resources: dict[str, Any], next_url: str | None = None) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"search": {"mode": "match"}, "resource": r} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def patient(fhir_id: str = "p1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": fhir_id, "identifier": [{"system": MRN_SYSTEM, "value": "MRN-1"}]}


def observation(loinc: str, value: float, unit: str, when: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"obs-{next(_ids)}",
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def document(text: str, content_type: str = "text/plain", when: str = "2024-03-01T10:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": f"doc-{next(_ids)}",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "date": when,
        "context": {"period": {"start": when}},  # an R4 BackboneElement (a list in R5)
        "content": [{"attachment": {"contentType": content_type, "data": base64.b64encode(text.encode()).decode()}}],
    }


def fake_ehr(
    patients: list[dict[str, Any]],
    observations: list[dict[str, Any]],
    documents: list[dict[str, Any]] | None = None,
    seen: list[httpx.Request] | None = None,
) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path.removeprefix("/fhir/R4/")
        if path == "Patient":
            assert request.url.params["identifier"] == f"{MRN_SYSTEM}|MRN-1" or not patients
            return httpx.Response(200, json=searchset(*patients))
        if path == "Observation":
            return httpx.Response(200, json=searchset(*observations))
        if path == "DocumentReference":
            return httpx.Response(200, json=searchset(*(documents or [])))
        return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": []})

    return httpx.Client(transport=httpx.MockTransport(handle))


def failing(handler: Handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_found_patient_with_labs_and_notes() -> None:
    seen: list[httpx.Request] = []
    client = fake_ehr(
        [patient()],
        [observation("6768-6", 310, "U/L", "2024-03-01T09:00:00Z"), observation("2532-0", 280.5, "U/L", "2024-02-01")],
        [document(NOTE), document("%PDF-1.7", content_type="application/pdf")],
        seen,
    )
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=client)
    assert context.fhir_status == "ok", context.detail
    assert context.labs["6768-6"].value == 310.0
    assert context.labs["6768-6"].unit == "U/L"
    assert context.labs["6768-6"].effective == "2024-03-01T09:00:00Z"
    assert context.labs["2532-0"].value == 280.5
    assert context.notes == (NOTE,)
    obs_query = next(r for r in seen if r.url.path.endswith("/Observation")).url.params
    assert obs_query["subject"] == "Patient/p1"
    assert obs_query["category"] == "laboratory"
    assert obs_query["code"] == "http://loinc.org|2532-0,http://loinc.org|6768-6"
    assert obs_query.get_list("date") == ["le2024-03-15", "ge2023-03-16"]
    assert obs_query["_sort"] == "-date"


def test_latest_value_before_the_study_date_wins() -> None:
    client = fake_ehr(
        [patient()],
        [
            observation("6768-6", 100, "U/L", "2023-12-01T09:00:00Z"),
            observation("6768-6", 999, "U/L", "2024-04-01T09:00:00Z"),  # after the study (a lenient server)
            observation("6768-6", 250, "U/L", "2024-03-10T09:00:00+02:00"),
            observation("6768-6", 777, "U/L", "2024-03-14T09:00:00Z", status="entered-in-error"),
            observation("6768-6", 50, "U/L", "2022-01-01T09:00:00Z"),  # outside the window
        ],
    )
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=client)
    assert context.labs["6768-6"].value == 250.0


def test_next_links_are_followed() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/Patient"):
            return httpx.Response(200, json=searchset(patient()))
        if path.endswith("/Observation") and request.url.params.get("page") != "2":
            page1 = searchset(observation("6768-6", 1, "U/L", "2024-03-01"), next_url=f"{BASE}/Observation?page=2")
            return httpx.Response(200, json=page1)
        if path.endswith("/Observation"):
            return httpx.Response(200, json=searchset(observation("2532-0", 2, "U/L", "2023-06-01")))
        return httpx.Response(200, json=searchset())

    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(handle))
    assert sorted(context.labs) == ["2532-0", "6768-6"]


def test_missing_lab_code_is_absent() -> None:
    client = fake_ehr([patient()], [observation("6768-6", 310, "U/L", "2024-03-01")])
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=client)
    assert context.fhir_status == "ok"
    assert "2532-0" not in context.labs
    assert context.notes == ()


def test_patient_not_found() -> None:
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=fake_ehr([], []))
    assert context.fhir_status == "patient-not-found"
    assert context.labs == {}


def test_ambiguous_patient_is_not_found() -> None:
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=fake_ehr([patient("a"), patient("b")], []))
    assert context.fhir_status == "patient-not-found"
    assert "2 Patients" in context.detail


def test_empty_identifier_system_sends_the_bare_value() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=searchset())

    settings = FhirSettings(base_url=BASE)
    fetch_context(settings, "MRN-1", None, REQUIREMENTS, client=failing(handle))
    assert seen[0].url.params["identifier"] == "MRN-1"


def test_connection_error_is_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(refuse))
    assert context.fhir_status == "unreachable"
    assert "cannot connect" in context.detail
    assert "MRN-1" not in context.detail


def test_timeout_is_unreachable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(slow))
    assert context.fhir_status == "unreachable"
    assert "1 s" in context.detail


@pytest.mark.parametrize("status", [500, 503])
def test_server_error_is_unreachable(status: int) -> None:
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(lambda r: httpx.Response(status)))
    assert context.fhir_status == "unreachable"
    assert f"HTTP {status}" in context.detail


def test_server_error_after_the_patient_is_unreachable() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Patient"):
            return httpx.Response(200, json=searchset(patient()))
        return httpx.Response(500)

    assert fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(handle)).fhir_status == "unreachable"


@pytest.mark.parametrize(
    "payload",
    [b"<html>proxy error</html>", b'{"resourceType": "Bundle", "type": "not-a-bundle-type", "identifier": "MRN-1"}'],
)
def test_unparseable_payload_is_unreachable(payload: bytes) -> None:
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(lambda r: httpx.Response(200, content=payload)))
    assert context.fhir_status == "unreachable"
    assert "payload" in context.detail
    assert "MRN-1" not in context.detail


def test_notes_fall_back_when_the_server_rejects_the_date_parameter() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/Patient"):
            return httpx.Response(200, json=searchset(patient()))
        if path.endswith("/DocumentReference") and "date" in request.url.params:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        if path.endswith("/DocumentReference"):
            return httpx.Response(200, json=searchset(document(NOTE), document("later", when="2024-05-01T00:00:00Z")))
        return httpx.Response(200, json=searchset())

    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(handle))
    assert context.fhir_status == "ok"
    assert context.notes == (NOTE,)


class Trickle:
    """A body that arrives one byte every ``interval`` seconds (a proxy or EHR answering at a crawl)."""

    def __init__(self, body: bytes, interval: float) -> None:
        self.body, self.interval, self.sent = body, interval, 0

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self.body)):
            time.sleep(self.interval)
            self.sent += 1
            yield self.body[i:i + 1]


def test_a_trickling_server_is_cut_off_by_the_budget_not_the_read_timeout() -> None:
    trickle = Trickle(json.dumps(searchset(patient())).encode(), interval=0.1)  # each read well inside 1 s
    client = failing(lambda request: httpx.Response(200, content=trickle))
    started = time.monotonic()
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=client, budget_seconds=0.8)
    took = time.monotonic() - started
    assert context.fhir_status == "timeout" and "0.8 s" in context.detail
    assert 0.8 <= took < 1.1, took
    time.sleep(0.3)
    sent = trickle.sent
    time.sleep(0.5)
    assert trickle.sent == sent < len(trickle.body), "the abandoned fetch must stop reading"


def test_a_fetch_within_its_budget_is_unchanged() -> None:
    client = fake_ehr([patient()], [observation("6768-6", 120, "U/L", "2024-03-01")], [document(NOTE)])
    context = fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=client, budget_seconds=10)
    assert context.fhir_status == "ok" and set(context.labs) == {"6768-6"} and context.notes == (NOTE,)


def test_a_bug_in_the_fetch_is_raised_not_reported_as_a_timeout() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        fetch_context(SETTINGS, "MRN-1", "20240315", REQUIREMENTS, client=failing(broken), budget_seconds=5)


def test_no_settings_is_unreachable() -> None:
    context = fetch_context(None, "MRN-1", "20240315", REQUIREMENTS)
    assert context.fhir_status == "unreachable"
    assert context.detail == "no [fhir] base_url configured"
