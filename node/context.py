"""FHIR client: the patient of a study, the labs a pipeline declares and the notes it reads -> ClinicalContext.

Payloads are parsed with fhir.resources' R4B models (R4-compatible); anything the EHR did not give stays absent.
A whole fetch has one wall-clock budget: httpx's timeouts are per read, so a server trickling bytes defeats them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from time import monotonic
from typing import Any, Iterator

import httpx
import pydantic

# fhir.resources 8 defaults to R5, whose DocumentReference differs from R4 (``context`` is a list of References,
# R4's is a BackboneElement), so R5 models reject valid R4 payloads. R4B left these resources as in R4.
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from node.config import FhirSettings
from pipelines.base import ClinicalContext, LabValue, PipelineRequirements

log = logging.getLogger(__name__)

LOINC_SYSTEM = "http://loinc.org"
FHIR_JSON = "application/fhir+json"
MAX_PAGES = 50  # a server that keeps linking `next` beyond this is broken; stop rather than loop
IGNORED_STATUSES = {"entered-in-error", "cancelled"}


class _Unreachable(Exception):
    """The EHR did not give a usable answer; the message is safe to show (no patient identifiers)."""


class _OverBudget(Exception):
    """The fetch ran past its wall-clock budget (or its caller stopped waiting for it)."""


class _HttpStatus(_Unreachable):
    """The EHR answered a search with a status other than 200."""

    def __init__(self, what: str, status: int) -> None:
        super().__init__(f"{what}: FHIR server answered HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class _Answer:
    """A complete 200 answer: where it came from and its body."""

    url: str
    content: bytes


@dataclass(frozen=True)
class _Hit:
    """One search match: the validated model and the JSON it came from (for values as the EHR wrote them)."""

    model: Any
    raw: dict[str, Any]


def _study_day(study_date: str | None) -> date:
    """DICOM DA (YYYYMMDD; old ACR-NEMA YYYY.MM.DD) -> date; missing or malformed -> today."""
    digits = re.sub(r"\D", "", study_date or "")
    if len(digits) == 8:
        try:
            return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            pass
    if study_date:
        log.warning("fhir.context malformed StudyDate; using today as the reference date")
    return date.today()


def _as_utc(moment: date | datetime) -> datetime:
    if isinstance(moment, datetime):
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
    return datetime.combine(moment, time.min, tzinfo=timezone.utc)


def _local_day(moment: date | datetime) -> date:
    return moment.date() if isinstance(moment, datetime) else moment


class _Session:
    def __init__(self, settings: FhirSettings, client: httpx.Client, deadline: float | None = None,
                 abandoned: threading.Event | None = None) -> None:
        self.base_url = settings.base_url.rstrip("/")
        self.timeout = settings.timeout_seconds
        self.client = client
        self.deadline = deadline  # time.monotonic() by which the whole fetch must be done; None: no budget
        self.abandoned = abandoned or threading.Event()

    def _left(self) -> float:
        """Seconds left of the budget; raises once it is spent (checked between every chunk of every answer)."""
        if self.abandoned.is_set():
            raise _OverBudget("the caller stopped waiting")
        if self.deadline is None:
            return float("inf")
        left = self.deadline - monotonic()
        if left <= 0:
            raise _OverBudget("budget spent")
        return left

    def get(self, url: str, params: list[tuple[str, str]] | None, what: str) -> _Answer:
        # Streamed, so that the budget is checked between chunks: a read timeout alone never fires on a trickle.
        timeout = min(self.timeout, self._left())
        try:
            query = tuple(params) if params is not None else None  # tuple: covariant, as httpx.get types it
            with self.client.stream("GET", url, params=query, headers={"Accept": FHIR_JSON}, timeout=timeout) as response:
                if response.status_code != 200:
                    raise _HttpStatus(what, response.status_code)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    self._left()
                return _Answer(str(response.request.url), bytes(body))
        except httpx.TimeoutException as exc:
            self._left()  # a read cut short by the budget is a budget overrun, not an unreachable server
            raise _Unreachable(f"{what}: no answer within {self.timeout:g} s ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _Unreachable(f"{what}: cannot connect to the FHIR server ({type(exc).__name__})") from exc

    def search(self, resource_type: str, params: list[tuple[str, str]], model: type[Any]) -> list[_Hit]:
        """All matches of a type-level search, following Bundle ``next`` links."""
        what = f"{resource_type} search"
        url: str | None = f"{self.base_url}/{resource_type}"
        page_params: list[tuple[str, str]] | None = params
        hits: list[_Hit] = []
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            if url is None:
                return hits
            answer = self.get(url, page_params, what)
            raw = _json(answer, what)
            bundle = _parse(Bundle, raw, what)
            for model_entry, raw_entry in zip(bundle.entry or [], raw.get("entry") or []):
                mode = model_entry.search.mode if model_entry.search is not None else None
                resource = model_entry.resource
                if mode in (None, "match") and isinstance(resource, model):
                    hits.append(_Hit(resource, raw_entry.get("resource") or {}))
            seen.add(answer.url)
            next_url = next((link.url for link in bundle.link or [] if link.relation == "next"), None)
            url = str(next_url) if next_url and str(next_url) not in seen else None
            page_params = None  # a next link carries its own query
        raise _Unreachable(f"{what}: more than {MAX_PAGES} pages; refusing to follow further")


def _json(answer: _Answer, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(answer.content)
    except ValueError as exc:
        raise _Unreachable(f"{what}: payload is not JSON") from exc
    if not isinstance(payload, dict):
        raise _Unreachable(f"{what}: payload is not a JSON object")
    return payload


def _parse(model: type[Any], payload: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(payload)
    except pydantic.ValidationError as exc:
        # The errors quote input values, which may be identifiers: keep them out of INFO and of the detail.
        log.debug("fhir.context %s invalid payload: %s", what, exc)
        raise _Unreachable(f"{what}: payload is not a valid FHIR R4 {model.__name__} ({exc.error_count()} errors)") from exc


def _find_patient(session: _Session, settings: FhirSettings, patient_id: str) -> str | ClinicalContext:
    """The FHIR id of the one Patient with this identifier, or the context to return when there is not one."""
    system = settings.patient_identifier_system
    token = f"{system}|{patient_id}" if system else patient_id
    patients = session.search("Patient", [("identifier", token)], Patient)
    if len(patients) == 1 and patients[0].model.id:
        return str(patients[0].model.id)
    if not patients:
        return ClinicalContext.unavailable("patient-not-found", "no Patient has the study's PatientID as identifier")
    return ClinicalContext.unavailable(
        "patient-not-found", f"{len(patients)} Patients share the study's PatientID as identifier; refusing to guess"
    )


def _effective(hit: _Hit) -> tuple[date | datetime, str] | None:
    obs = hit.model
    if obs.effectiveDateTime is not None:
        return obs.effectiveDateTime, str(hit.raw.get("effectiveDateTime", obs.effectiveDateTime))
    if obs.effectiveInstant is not None:
        return obs.effectiveInstant, str(hit.raw.get("effectiveInstant", obs.effectiveInstant))
    period = obs.effectivePeriod
    if period is not None and (period.end or period.start) is not None:
        key = "end" if period.end is not None else "start"
        return period.end or period.start, str(hit.raw.get("effectivePeriod", {}).get(key, period.end or period.start))
    return None


def _labs(session: _Session, fhir_id: str, day: date, window_days: int, requirements: PipelineRequirements) -> dict[str, LabValue]:
    wanted = {lab.loinc for lab in requirements.labs}
    if not wanted:
        return {}
    first = day - timedelta(days=window_days)
    params = [
        ("subject", f"Patient/{fhir_id}"),
        ("category", "laboratory"),
        ("code", ",".join(f"{LOINC_SYSTEM}|{loinc}" for loinc in sorted(wanted))),
        ("date", f"le{day.isoformat()}"),
        ("date", f"ge{first.isoformat()}"),
        ("_sort", "-date"),
    ]
    best: dict[str, tuple[datetime, LabValue]] = {}
    for hit in session.search("Observation", params, Observation):
        obs = hit.model
        quantity = obs.valueQuantity
        effective = _effective(hit)
        if obs.status in IGNORED_STATUSES or quantity is None or quantity.value is None or effective is None:
            continue
        moment, as_given = effective
        # The server filtered by date already; checking again costs nothing and guards lenient servers.
        if not first <= _local_day(moment) <= day:
            continue
        unit = quantity.unit or quantity.code or ""
        for coding in obs.code.coding or []:
            if coding.system == LOINC_SYSTEM and coding.code in wanted:
                current = best.get(coding.code)
                if current is None or _as_utc(moment) > current[0]:
                    best[coding.code] = (_as_utc(moment), LabValue(coding.code, float(quantity.value), unit, as_given))
    return {loinc: value for loinc, (_, value) in best.items()}


def _attachment_texts(doc: Any) -> Iterator[str]:
    for content in doc.content or []:
        attachment = content.attachment
        content_type = (attachment.contentType or "").lower()
        if attachment.data is None or content_type.split(";")[0].strip() != "text/plain":
            continue  # URLs, PDFs and other formats are out of scope: a pipeline reads plain text only
        charset = re.search(r"charset=([\w.-]+)", content_type)
        try:
            text = bytes(attachment.data).decode(charset.group(1) if charset else "utf-8", errors="replace")
        except LookupError:
            text = bytes(attachment.data).decode("utf-8", errors="replace")
        if text.strip():
            yield text


def _notes(session: _Session, fhir_id: str, day: date) -> tuple[str, ...]:
    base = [("subject", f"Patient/{fhir_id}")]
    try:
        docs = session.search("DocumentReference", [*base, ("date", f"le{day.isoformat()}")], DocumentReference)
    except _HttpStatus as exc:
        # A strict server without the `date` search parameter answers 400; filter on our side instead.
        if exc.status != 400:
            raise
        docs = session.search("DocumentReference", base, DocumentReference)
    dated: list[tuple[datetime, str]] = []
    for hit in docs:
        doc = hit.model
        if doc.status in IGNORED_STATUSES or doc.docStatus == "entered-in-error":
            continue
        if doc.date is not None and _local_day(doc.date) > day:
            continue
        moment = _as_utc(doc.date) if doc.date is not None else datetime.min.replace(tzinfo=timezone.utc)
        dated.extend((moment, text) for text in _attachment_texts(doc))
    dated.sort(key=lambda pair: pair[0], reverse=True)  # newest first
    return tuple(text for _, text in dated)


def fetch_context(
    settings: FhirSettings | None,
    patient_id: str,
    study_date: str | None,
    requirements: PipelineRequirements,
    client: httpx.Client | None = None,
    budget_seconds: float | None = None,
) -> ClinicalContext:
    """Ask the EHR about the patient of a study: the latest declared labs in the window before the study, and notes.

    Never raises for EHR trouble: the status and detail of the returned context say what went wrong. With
    ``budget_seconds`` the answer comes within that many seconds, "timeout" when the EHR was not done by then.
    """
    if settings is None:
        return ClinicalContext.unavailable("unreachable", "no [fhir] base_url configured")
    if budget_seconds is None:
        return _fetch(settings, patient_id, study_date, requirements, client, None, threading.Event())
    # The fetch runs beside the caller, who stops waiting at the deadline; the fetch itself notices between two
    # chunks (or at its capped read timeout) and ends, so nothing blocks past the budget for long.
    abandoned = threading.Event()
    outcome: list[ClinicalContext | BaseException] = []

    def fetch() -> None:
        try:
            outcome.append(_fetch(settings, patient_id, study_date, requirements, client, budget_seconds, abandoned))
        except BaseException as exc:  # handed to the caller, who raises it
            outcome.append(exc)

    fetcher = threading.Thread(target=fetch, name="fhir-context", daemon=True)
    fetcher.start()
    fetcher.join(budget_seconds)
    if not outcome:
        abandoned.set()
        return _over_budget(budget_seconds)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _over_budget(budget_seconds: float) -> ClinicalContext:
    detail = f"no complete answer within the budget of {budget_seconds:g} s (budgets.fhir_seconds)"
    log.info("fhir.context status=timeout detail=%r", detail)
    return ClinicalContext.unavailable("timeout", detail)


def _fetch(
    settings: FhirSettings,
    patient_id: str,
    study_date: str | None,
    requirements: PipelineRequirements,
    client: httpx.Client | None,
    budget_seconds: float | None,
    abandoned: threading.Event,
) -> ClinicalContext:
    deadline = None if budget_seconds is None else monotonic() + budget_seconds
    day = _study_day(study_date)
    own_client = client is None
    session = _Session(settings, client if client is not None else httpx.Client(timeout=settings.timeout_seconds),
                       deadline, abandoned)
    try:
        found = _find_patient(session, settings, patient_id)
        if isinstance(found, ClinicalContext):
            log.info("fhir.context status=%s detail=%r", found.fhir_status, found.detail)
            return found
        log.debug("fhir.context PatientID %r is Patient/%s", patient_id, found)
        labs = _labs(session, found, day, settings.lab_window_days, requirements)
        notes = _notes(session, found, day) if requirements.reads_notes else ()
    except _Unreachable as exc:
        log.info("fhir.context status=unreachable detail=%r", str(exc))
        return ClinicalContext.unavailable("unreachable", str(exc))
    except _OverBudget:
        assert budget_seconds is not None  # without a budget the session never raises it
        return _over_budget(budget_seconds)
    finally:
        if own_client:
            session.client.close()
    detail = f"{len(labs)}/{len(requirements.labs)} labs within {settings.lab_window_days} days before the study"
    if requirements.reads_notes:
        detail += f", {len(notes)} notes"
    log.info("fhir.context status=ok %s", detail)
    return ClinicalContext(fhir_status="ok", labs=labs, notes=notes, detail=detail)
