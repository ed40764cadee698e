"""The fhir destination against a fake FHIR server (httpx.MockTransport): the transaction's content (Task priority,
focus and reason; DiagnosticReport status, code, conclusion; one Observation per finding), conditional writes on
stable identifiers (what makes a re-send or an amendment update instead of duplicate), and what each failure means
to the outbox (retry or dead letter with the server's reason). The real engine: tests/integration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from test_delivery_report import write_amendment, write_empty_sr, write_findings_sr, write_not_analysed_sr

from node.config import DestinationSettings, OutboxSettings
from node.delivery import open_destination
from node.delivery.fhir import FhirDestination, build_transaction, subject_of
from node.delivery.report import read_report
from node.priority import DEFAULT_RULES, Priority, PriorityRule

BASE = "http://ehr.test/fhir/R4"


def settings(**kw: Any) -> DestinationSettings:
    return DestinationSettings(name="ehr", type="fhir", kinds=frozenset({"sr"}), retry=OutboxSettings(), url=BASE,
                               patient_identifier_system="urn:mrn", **kw)


class FakeEhr:
    """Answers a search with every resource of that type in ``known``; keeps every transaction; ``fail`` overrides."""

    def __init__(self, known: dict[str, list[dict[str, Any]]] | None = None) -> None:
        self.known = known or {}
        self.searches: list[tuple[str, str]] = []
        self.transactions: list[dict[str, Any]] = []
        self.fail: Callable[[httpx.Request], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail is not None:
            return self.fail(request)
        path = request.url.path.removeprefix("/fhir/R4")
        if request.method == "GET":
            kind = path.strip("/")
            self.searches.append((kind, str(request.url.params)))
            entry = [{"resource": r, "search": {"mode": "match"}} for r in self.known.get(kind, [])]
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": entry})
        body = json.loads(request.content)
        self.transactions.append(body)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "201 Created"}} for _ in body["entry"]]})

    def destination(self, **kw: Any) -> FhirDestination:
        return FhirDestination(settings(**kw), "AINODE", DEFAULT_RULES, client=httpx.Client(transport=httpx.MockTransport(self)))


def resources(transaction: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in transaction["entry"] if e["resource"]["resourceType"] == kind]


def test_task_and_report_for_a_malignant_finding(tmp_path: Path) -> None:
    ehr = FakeEhr({"Patient": [{"resourceType": "Patient", "id": "p1"}],
                   "ServiceRequest": [{"resourceType": "ServiceRequest", "id": "sr9", "status": "active",
                                       "intent": "order", "subject": {"reference": "Patient/p1"}}]})
    path = write_findings_sr(tmp_path)
    (outcome,) = ehr.destination().send([path], 30)
    assert outcome.ok, outcome.detail
    assert ehr.searches[:2] == [("Patient", "identifier=urn%3Amrn%7CPAT-0042"),
                                ("ServiceRequest", "identifier=ACC0042")]
    assert [kind for kind, _ in ehr.searches[2:]] == ["Task"]  # is our Task already being worked on?
    (tx,) = ehr.transactions
    Bundle.model_validate(tx)  # valid R4 as sent
    (task,) = resources(tx, "Task")
    assert (task["status"], task["intent"], task["priority"]) == ("requested", "order", "urgent")
    assert task["focus"] == {"reference": "ServiceRequest/sr9"} and task["for"] == {"reference": "Patient/p1"}
    assert "Malignant neoplasm" in task["reasonCode"]["text"] and "0.87" in task["reasonCode"]["text"]
    assert "malignant, likely" in task["description"] and task["code"]["coding"][0]["code"] == "fulfill"
    (report,) = resources(tx, "DiagnosticReport")
    assert report["status"] == "final"
    assert report["code"]["coding"][0] == {"system": "http://loinc.org", "code": "18748-4",
                                           "display": "Diagnostic imaging study"}
    assert report["basedOn"] == [{"reference": "ServiceRequest/sr9"}]
    assert "AI priority: urgent" in report["conclusion"] and "2 finding(s)" in report["conclusion"]
    observations = resources(tx, "Observation")
    assert len(observations) == len(report["result"]) == 2
    malignant = observations[0]
    assert malignant["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert malignant["code"]["coding"][0]["code"] == "86049000"
    assert malignant["valueQuantity"]["value"] == pytest.approx(0.87)
    assert malignant["interpretation"][0]["coding"][0]["code"] == "AA"  # escalated by a rule
    assert observations[1]["interpretation"][0]["coding"][0]["code"] == "A"  # benign: abnormal, not escalated
    assert malignant["bodySite"]["coding"][0]["code"] == "816094009"
    assert malignant["identifier"][0]["value"].startswith("urn:oid:")
    # the ImagingStudy is created only if none has the study's UID
    (entry,) = [e for e in tx["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert entry["request"]["ifNoneExist"] == "identifier=urn:dicom:uid|urn:oid:1.2.826.0.1.3680043.8.498.11"


def test_without_patient_or_order_the_task_points_at_the_imaging_study(tmp_path: Path) -> None:
    ehr = FakeEhr()
    assert ehr.destination().send([write_findings_sr(tmp_path)], 30)[0].ok
    (tx,) = ehr.transactions
    (study_entry,) = [e for e in tx["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    (task,) = resources(tx, "Task")
    assert task["focus"] == {"reference": study_entry["fullUrl"]}
    # a logical reference: the worklist can still match the patient by identifier
    assert task["for"] == {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "PAT-0042"}}
    # DICOM allows an empty Patient ID: the resources are still valid, with a subject that says so
    anonymous = replace(read_report(write_findings_sr(tmp_path)), patient_id="")
    bundle = build_transaction(anonymous, DEFAULT_RULES, subject_of(anonymous, None, "urn:mrn"), None)
    (study,) = resources(json.loads(bundle.model_dump_json(exclude_none=True)), "ImagingStudy")
    assert study["subject"] == {"type": "Patient", "display": "patient without an ID in the DICOM study"}


def test_resends_and_amendments_write_the_same_resources(tmp_path: Path) -> None:
    ehr = FakeEhr()
    destination = ehr.destination()
    original = write_findings_sr(tmp_path)
    destination.send([original], 30)
    destination.send([original], 30)
    destination.send([write_amendment(tmp_path, original)], 30)
    first, again, amended = ehr.transactions

    def requests(tx: dict[str, Any]) -> list[tuple[str, str]]:
        return [(e["request"]["method"], e["request"].get("ifNoneExist") or e["request"]["url"]) for e in tx["entry"]]

    # every write is conditional on an identifier of ours: no POST without ifNoneExist
    assert all(method == "PUT" and "?identifier=" in url or method == "POST" and url.startswith("identifier=")
               for method, url in requests(first))
    assert requests(again) == requests(first)
    # the amendment updates the same report and task (and the finding it kept), with status "amended"
    assert requests(amended) == [r for r in requests(first) if r != requests(first)[2]]
    (report,) = resources(amended, "DiagnosticReport")
    assert report["status"] == "amended" and "Amends an earlier AI report" in report["conclusion"]
    assert [o["status"] for o in resources(amended, "Observation")] == ["amended"]


def test_a_resend_keeps_the_worklists_task_status_and_an_amendment_asks_again(tmp_path: Path) -> None:
    ehr = FakeEhr()
    destination = ehr.destination()
    original = write_findings_sr(tmp_path)
    destination.send([original], 30)
    (task,) = resources(ehr.transactions[0], "Task")
    assert task["status"] == "requested"
    ehr.known["Task"] = [{**task, "id": "t1", "status": "in-progress"}]  # a reader took it up
    destination.send([original], 30)
    assert resources(ehr.transactions[1], "Task")[0]["status"] == "in-progress"
    ehr.known["Task"] = [{**task, "id": "t1", "status": "cancelled"}]  # a cancelled task is asked for again
    destination.send([original], 30)
    assert resources(ehr.transactions[2], "Task")[0]["status"] == "requested"
    ehr.known["Task"] = [{**task, "id": "t1", "status": "completed"}]
    destination.send([write_amendment(tmp_path, original)], 30)
    assert resources(ehr.transactions[3], "Task")[0]["status"] == "requested"


def test_an_amendment_withdraws_the_findings_it_no_longer_states(tmp_path: Path) -> None:
    ehr = FakeEhr()
    original = write_findings_sr(tmp_path)
    ehr.destination().send([original], 30)
    malignant, benign = resources(ehr.transactions[0], "Observation")
    # the EHR now has the first report and its two Observations
    ehr.known = {"DiagnosticReport": [{**resources(ehr.transactions[0], "DiagnosticReport")[0], "id": "dr1",
                                       "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}]}],
                 "Observation": [{**malignant, "id": "o1", "meta": {"versionId": "1"}}, {**benign, "id": "o2"}]}
    ehr.destination().send([write_amendment(tmp_path, original)], 30)
    amended = ehr.transactions[1]
    assert ("Observation", "_id=o1%2Co2") in ehr.searches
    withdrawn = [e for e in amended["entry"] if e["request"]["url"].startswith("Observation/")]
    assert [(e["request"]["method"], e["request"]["url"]) for e in withdrawn] == [("PUT", "Observation/o2")]
    assert withdrawn[0]["resource"]["status"] == "entered-in-error"
    assert withdrawn[0]["resource"]["identifier"] == benign["identifier"] and "meta" not in withdrawn[0]["resource"]
    (report,) = resources(amended, "DiagnosticReport")
    assert len(report["result"]) == 1  # the malignant finding the amendment kept


def test_not_analysed_and_nothing_found(tmp_path: Path) -> None:
    ehr = FakeEhr()
    destination = ehr.destination()
    assert destination.send([write_not_analysed_sr(tmp_path), write_empty_sr(tmp_path)], 30)[0].ok
    skipped, empty = ehr.transactions
    assert resources(skipped, "Observation") == [] and resources(empty, "Observation") == []
    (report,) = resources(skipped, "DiagnosticReport")
    assert "did not analyse this study: 2 instance(s) outside-intended-use (lateral view)" in report["conclusion"]
    assert resources(skipped, "Task")[0]["priority"] == "routine"
    assert "no finding above its detection threshold" in resources(empty, "DiagnosticReport")[0]["conclusion"]


def test_site_rules_set_the_priority(tmp_path: Path) -> None:
    ehr = FakeEhr()
    rules = (PriorityRule("anything at all", Priority.STAT, 0.5),)
    destination = FhirDestination(settings(), "AINODE", rules, client=httpx.Client(transport=httpx.MockTransport(ehr)))
    destination.send([write_findings_sr(tmp_path)], 30)
    assert resources(ehr.transactions[0], "Task")[0]["priority"] == "stat"
    # open_destination passes the rules down
    plugin = open_destination(settings(), "AINODE", rules)
    assert isinstance(plugin, FhirDestination) and plugin.priority_rules == rules


def test_failures_map_to_retry_or_dead_letter(tmp_path: Path) -> None:
    ehr = FakeEhr()
    destination = ehr.destination(token="s3cret")
    path = write_findings_sr(tmp_path)
    seen: list[httpx.Request] = []

    def answer(status: int, body: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
        def respond(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(status, json=body)
        return respond

    invalid = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "invalid", "details": {"text": "Task.priority: bad code for PAT-0042"}}]}
    ehr.fail = answer(422, invalid)
    (outcome,) = destination.send([path], 30)
    assert not outcome.ok and outcome.permanent
    assert "HTTP 422: Task.priority: bad code for <patient id>" in outcome.detail  # no identifiers in the log
    assert seen[0].headers["Authorization"] == "Bearer s3cret"
    ehr.fail = answer(503, {})
    (outcome,) = destination.send([path], 30)
    assert not outcome.ok and not outcome.permanent and "HTTP 503" in outcome.detail
    ehr.fail = answer(429, {})
    assert not destination.send([path], 30)[0].permanent

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    ehr.fail = refuse
    (outcome,) = destination.send([path], 30)
    assert not outcome.ok and not outcome.permanent and "ConnectError" in outcome.detail
    # a transaction some entries of which failed: retried
    def partial(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response",
                                             "entry": [{"response": {"status": "409 Conflict"}}]})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    ehr.fail = partial
    (outcome,) = destination.send([path], 30)
    assert not outcome.ok and not outcome.permanent and "409" in outcome.detail
    # not an SR of ours: dead-lettered at once, naming the fix
    other = tmp_path / "overlay.dcm"
    other.write_bytes(b"not dicom")
    (outcome,) = destination.send([other], 30)
    assert outcome.permanent and 'kinds = ["sr"]' in outcome.detail
    # a spent budget: nothing attempted, retried later
    (outcome,) = destination.send([path], 0)
    assert not outcome.ok and not outcome.permanent and "budget" in outcome.detail
