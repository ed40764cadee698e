"""The ``fhir`` destination: each SR of ours becomes, in one FHIR R4 transaction, a DiagnosticReport with one
Observation per finding and a Task asking for the study to be read, with the AI priority and its reason.

Worklists read Tasks (priority, focus on the ServiceRequest of the accession, else the ImagingStudy) and
DiagnosticReports. Every resource is written by a conditional update on an identifier of ours, so sending the same
SR again, or its amendment, updates the same resources and never duplicates them. The payload is built and checked
with fhir.resources' R4B models (Medplum and most EHRs speak R4). No database access; one outcome per file.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from time import monotonic
from typing import Any, Sequence

import httpx
import pydantic
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.task import Task

from node.config import DestinationSettings
from node.delivery import ObjectNotSent, SendOutcome
from node.delivery.report import ReportError, StudyReport, abnormal_flag, fhir_system, read_report
from node.priority import DEFAULT_RULES, PriorityDecision, PriorityRule, decide

FHIR_JSON = "application/fhir+json"
DICOM_UID_SYSTEM = "urn:dicom:uid"  # FHIR's system for DICOM UIDs, whose values are "urn:oid:<uid>"
REPORT_ID_SYSTEM = "urn:dicom-ai-node:ai-report"  # <study uid>/<pipeline>: one report and one Task per pipeline run
TASK_ID_SYSTEM = "urn:dicom-ai-node:ai-task"
LOINC = "http://loinc.org"
IMAGING_REPORT = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"  # diagnostic service section: RAD
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
# a Task a worklist has taken up: a re-send of the same report must not put it back to "requested"
KEPT_TASK_STATUSES = frozenset({"received", "accepted", "ready", "in-progress", "on-hold", "completed"})
AI_NOTICE = "AI result, unverified machine output: not for diagnostic use until a reader confirms it."


class FhirError(ObjectNotSent):
    """One SR could not be written to the FHIR server."""


def _oid(uid: str) -> str:
    return f"urn:oid:{uid}"


def _ref_id(study_uid: str, pipeline: str) -> str:
    return f"{study_uid}/{pipeline}"


def conclusion(report: StudyReport, decision: PriorityDecision) -> str:
    """The report's conclusion text: what the AI found (or why it did not analyse), its priority and reason."""
    who = f"AI {report.pipeline} {report.pipeline_version}"
    if not report.analysed:
        what = f"{who} did not analyse this study: {report.not_analysed_reason}."
    elif not report.findings:
        what = f"{who}: no finding above its detection threshold."
    else:
        listed = "; ".join(f"{f.finding.class_meaning} {f.finding.probability:.2f} ({f.tracking_id})"
                           for f in report.findings)
        what = f"{who}: {len(report.findings)} finding(s): {listed}."
    amended = " Amends an earlier AI report." if report.amended else ""
    return f"{what} AI priority: {decision.priority.code} ({decision.reason}).{amended} {AI_NOTICE}"


def build_transaction(
    report: StudyReport,
    rules: Sequence[PriorityRule],
    subject: dict[str, Any],
    service_request: str | None,
    issued: datetime | None = None,
    withdrawn: Sequence[dict[str, Any]] = (),
    task_status: str = "requested",
) -> Bundle:
    """The transaction for one report. ``subject``: a Reference (``{"reference": "Patient/..."}``, or a logical
    ``{"identifier": ...}`` when the EHR has no such Patient); ``service_request``: "ServiceRequest/<id>" of the
    accession, if the EHR has one; ``withdrawn``: Observations (as the EHR has them, with their id) of findings an
    amendment no longer states, written back as "entered-in-error"; ``task_status``: the Task's status (a worklist's
    own, kept on a re-send: see ``FhirDestination._task_status``). Raises pydantic.ValidationError when a resource
    would not be valid R4."""
    issued = issued or datetime.now(timezone.utc)
    decision = decide(report.ranked, rules)
    status = "amended" if report.amended else "final"
    study_url, report_url, task_url = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    study_identifier = {"system": DICOM_UID_SYSTEM, "value": _oid(report.study_instance_uid)}
    based_on = [{"reference": service_request}] if service_request else []
    entries: list[dict[str, Any]] = []

    imaging_study: dict[str, Any] = {"resourceType": "ImagingStudy", "status": "available",
                                     "identifier": [study_identifier], "subject": subject, "basedOn": based_on or None}
    if report.study_description:
        imaging_study["description"] = report.study_description
    # Created only when the EHR (or the PACS's bridge) has none yet: ours is minimal and must not overwrite theirs.
    entries.append({"fullUrl": study_url, "resource": ImagingStudy.model_validate(_clean(imaging_study)),
                    "request": {"method": "POST", "url": "ImagingStudy",
                                "ifNoneExist": f"identifier={DICOM_UID_SYSTEM}|{_oid(report.study_instance_uid)}"}})

    results = []
    for reported in report.findings:
        f = reported.finding
        code, display = abnormal_flag(decide([f], rules).priority)
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "identifier": [{"system": DICOM_UID_SYSTEM, "value": _oid(reported.tracking_uid)}],
            "status": status,
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": [{"system": fhir_system(f.class_scheme), "code": f.class_value,
                                 "display": f.class_meaning}], "text": f.class_meaning},
            "subject": subject,
            "basedOn": based_on or None,
            "issued": issued.isoformat(),
            "valueQuantity": {"value": round(f.probability, 4), "unit": "probability",
                              "system": "http://unitsofmeasure.org", "code": "1"},
            "interpretation": [{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}],
            "derivedFrom": [{"reference": study_url}],
            "note": [{"text": f"{reported.tracking_id} by {f.pipeline} {f.pipeline_version}. {AI_NOTICE}"}],
        }
        if reported.finding_site is not None:
            site = reported.finding_site
            observation["bodySite"] = {"coding": [{"system": fhir_system(site.scheme_designator), "code": site.value,
                                                   "display": site.meaning}], "text": site.meaning}
        url = f"urn:uuid:{uuid.uuid4()}"
        results.append({"reference": url})
        entries.append({"fullUrl": url, "resource": Observation.model_validate(_clean(observation)),
                        "request": {"method": "PUT", "url": f"Observation?identifier={DICOM_UID_SYSTEM}|"
                                                           f"{_oid(reported.tracking_uid)}"}})

    for observation in withdrawn:
        # FHIR: "withdrawn following previous final release"; the report no longer lists it
        resource = {k: v for k, v in observation.items() if k != "meta"} | {"status": "entered-in-error"}
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": Observation.model_validate(resource),
                        "request": {"method": "PUT", "url": f"Observation/{resource['id']}"}})

    report_key = _ref_id(report.study_instance_uid, report.pipeline)
    diagnostic_report = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REPORT_ID_SYSTEM, "value": report_key},
                       {"system": DICOM_UID_SYSTEM, "value": _oid(report.sr_sop_instance_uid)}],
        "basedOn": based_on or None,
        "status": status,
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [IMAGING_REPORT], "text": f"AI {report.pipeline} {report.pipeline_version}"},
        "subject": subject,
        "issued": issued.isoformat(),
        "imagingStudy": [{"reference": study_url}],
        "result": results or None,
        "conclusion": conclusion(report, decision),
    }
    entries.append({"fullUrl": report_url, "resource": DiagnosticReport.model_validate(_clean(diagnostic_report)),
                    "request": {"method": "PUT", "url": f"DiagnosticReport?identifier={REPORT_ID_SYSTEM}|{report_key}"}})

    task = {
        "resourceType": "Task",
        "identifier": [{"system": TASK_ID_SYSTEM, "value": report_key}],
        "basedOn": based_on or None,
        "status": task_status,
        "intent": "order",
        "priority": decision.priority.code,
        # "fulfill the focal request": read the study the order (or the ImagingStudy) asks for
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}],
                 "text": "Read the imaging study"},
        "description": f"AI priority {decision.priority.code}: {decision.reason}",
        "focus": {"reference": service_request or study_url},
        "for": subject,
        "authoredOn": issued.isoformat(),
        "lastModified": issued.isoformat(),
        "reasonCode": {"text": decision.reason},
        "reasonReference": {"reference": report_url},
    }
    entries.append({"fullUrl": task_url, "resource": Task.model_validate(_clean(task)),
                    "request": {"method": "PUT", "url": f"Task?identifier={TASK_ID_SYSTEM}|{report_key}"}})
    return Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def _clean(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if v is not None}


def subject_of(report: StudyReport, patient_fhir_id: str | None, identifier_system: str) -> dict[str, Any]:
    """The Patient found by identifier, else a logical reference a worklist can still match on."""
    if patient_fhir_id is not None:
        return {"reference": f"Patient/{patient_fhir_id}"}
    if not report.patient_id:  # DICOM allows an empty Patient ID; FHIR's ImagingStudy still needs a subject
        return {"type": "Patient", "display": "patient without an ID in the DICOM study"}
    identifier = {"value": report.patient_id}
    if identifier_system:
        identifier["system"] = identifier_system
    return {"identifier": identifier, "type": "Patient"}


def _outcome_text(response: httpx.Response) -> str:
    try:
        outcome = OperationOutcome.model_validate(response.json())
    except (ValueError, pydantic.ValidationError):
        return response.text[:300]
    return "; ".join(filter(None, ((i.details.text if i.details else None) or i.diagnostics or i.code
                                   for i in outcome.issue)))[:500]


class FhirDestination:
    def __init__(self, settings: DestinationSettings, calling_ae: str,
                 priority_rules: Sequence[PriorityRule] = DEFAULT_RULES, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.calling_ae = calling_ae  # not used by HTTP; kept for the plugin signature
        self.priority_rules = tuple(priority_rules)
        self.client = client

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        return headers

    def send(self, paths: list[Path], budget_seconds: float) -> list[SendOutcome]:
        deadline = monotonic() + budget_seconds
        client = self.client or httpx.Client()
        try:
            outcomes = []
            for path in paths:
                left = deadline - monotonic()
                if left <= 0:
                    outcomes.append(SendOutcome(path, False, "not attempted: the delivery budget was spent"))
                    continue
                try:
                    detail = self._send_one(client, path, min(left, 60.0))
                    outcomes.append(SendOutcome(path, True, detail))
                except FhirError as exc:
                    outcomes.append(SendOutcome(path, False, str(exc), permanent=exc.permanent))
            return outcomes
        finally:
            if self.client is None:
                client.close()

    def _request(self, client: httpx.Client, method: str, url: str, timeout: float, what: str,
                 **kwargs: Any) -> httpx.Response:
        try:
            response = client.request(method, url, headers=self._headers(), timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            raise FhirError(f"{what} at {self.settings.url}: {type(exc).__name__}") from exc
        if response.status_code >= 400:
            # 408/429 and 5xx: the server may take it later; any other 4xx refuses this content for good
            permanent = response.status_code < 500 and response.status_code not in (408, 429)
            raise FhirError(f"{what}: HTTP {response.status_code}: {_outcome_text(response)}", permanent)
        return response

    def _search(self, client: httpx.Client, resource_type: str, params: dict[str, str],
                timeout: float) -> list[dict[str, Any]]:
        """The matches of a search as the server wrote them (checked to be a valid Bundle)."""
        response = self._request(client, "GET", f"{self.settings.url}/{resource_type}", timeout,
                                 f"{resource_type} search", params=params)
        try:
            payload = response.json()
            Bundle.model_validate(payload)
        except (ValueError, pydantic.ValidationError) as exc:
            raise FhirError(f"{resource_type} search: the answer is not a FHIR Bundle") from exc
        return [e["resource"] for e in payload.get("entry") or []
                if e.get("resource", {}).get("resourceType") == resource_type
                and (e.get("search") or {}).get("mode", "match") == "match"]

    def _search_one(self, client: httpx.Client, resource_type: str, token: str, timeout: float) -> str | None:
        """The id of the one resource with this identifier; None when there is none or more than one."""
        found = self._search(client, resource_type, {"identifier": token}, timeout)
        return str(found[0]["id"]) if len(found) == 1 and found[0].get("id") else None

    def _withdrawn(self, client: httpx.Client, report: StudyReport, timeout: float) -> list[dict[str, Any]]:
        """The Observations our earlier report of this study lists whose findings the amendment no longer states."""
        key = _ref_id(report.study_instance_uid, report.pipeline)
        earlier = self._search(client, "DiagnosticReport", {"identifier": f"{REPORT_ID_SYSTEM}|{key}"}, timeout)
        listed = [str(r.get("reference", "")).removeprefix("Observation/") for d in earlier for r in d.get("result", [])
                  if str(r.get("reference", "")).startswith("Observation/")]
        if not listed:
            return []
        current = {_oid(f.tracking_uid) for f in report.findings}
        return [o for o in self._search(client, "Observation", {"_id": ",".join(listed)}, timeout)
                if o.get("status") != "entered-in-error"
                and not any(i.get("system") == DICOM_UID_SYSTEM and i.get("value") in current
                            for i in o.get("identifier", []))]

    def _task_status(self, client: httpx.Client, report: StudyReport, timeout: float) -> str:
        """"requested", unless our Task for this study and pipeline exists and a worklist has moved it on (accepted,
        in-progress, completed, ...): a re-sent report keeps that status. An amendment asks again ("requested"): the
        AI's result changed after someone may have read the study."""
        if report.amended:
            return "requested"
        key = _ref_id(report.study_instance_uid, report.pipeline)
        found = self._search(client, "Task", {"identifier": f"{TASK_ID_SYSTEM}|{key}"}, timeout)
        status = str(found[0].get("status") or "") if len(found) == 1 else ""
        return status if status in KEPT_TASK_STATUSES else "requested"

    def _send_one(self, client: httpx.Client, path: Path, timeout: float) -> str:
        try:
            report = read_report(path)
        except ReportError as exc:
            raise FhirError(f"{exc}; only the node's SRs go to a fhir destination: set its kinds = [\"sr\"]",
                            permanent=True) from exc
        try:
            return self._write(client, report, path, timeout)
        except FhirError as exc:
            raise FhirError(report.redact(str(exc)), exc.permanent) from exc

    def _write(self, client: httpx.Client, report: StudyReport, path: Path, timeout: float) -> str:
        system = self.settings.patient_identifier_system
        patient_id = None
        if report.patient_id:
            token = f"{system}|{report.patient_id}" if system else report.patient_id
            patient_id = self._search_one(client, "Patient", token, timeout)
        service_request = None
        if report.accession_number:
            found = self._search_one(client, "ServiceRequest", report.accession_number, timeout)
            service_request = f"ServiceRequest/{found}" if found else None
        withdrawn = self._withdrawn(client, report, timeout) if report.amended else []
        task_status = self._task_status(client, report, timeout)
        try:
            bundle = build_transaction(report, self.priority_rules, subject_of(report, patient_id, system),
                                       service_request, withdrawn=withdrawn, task_status=task_status)
        except pydantic.ValidationError as exc:
            raise FhirError(f"{path.name}: the FHIR resources would not be valid R4 ({exc.error_count()} errors)",
                            permanent=True) from exc
        response = self._request(client, "POST", self.settings.url + "/", timeout, "transaction",
                                 content=bundle.model_dump_json(exclude_none=True))
        try:
            answer = Bundle.model_validate(response.json())
        except (ValueError, pydantic.ValidationError) as exc:
            raise FhirError("transaction: the answer is not a FHIR Bundle") from exc
        statuses = [str(e.response.status) if e.response else "?" for e in answer.entry or []]
        if len(statuses) != len(bundle.entry or []) or not all(s.startswith("2") for s in statuses):
            raise FhirError(f"transaction: entries answered {', '.join(statuses) or 'nothing'}")
        priority = decide(report.ranked, self.priority_rules).priority.code
        return f"FHIR Task ({priority}) and DiagnosticReport with {len(report.findings)} Observation(s) written"
