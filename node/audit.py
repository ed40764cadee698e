"""The audit trail: what the node records about who touched which data, and its export as FHIR AuditEvents.

Recorded (table ``audit`` in the node's database): every association (calling AE, address, accepted or rejected,
instances stored), every read of patient data from the EHR, every result object sent, the configuration
the node started with (and whether it changed), logins, and every reader's feedback on an AI result. Built with fhir.resources (R4B), coded with DICOM's audit
vocabulary (DCM 110100-series, as ATNA/IHE use it) and FHIR's audit-event-type for REST reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from node.feedback import AUDIT_KIND
from node.store import Store

ASSOCIATION = "association"
PHI_READ = "phi-read"
RESULT_SENT = "result-sent"
CONFIGURATION = "configuration"
EXPORT = "research-export"  # node.export writes it
WEB_LOGIN = "web-login"  # node.web.pages writes it: a person logging in to the web application, or failing to
# Store.record_feedback writes it with the feedback row: who (actor), the verdict (outcome), the finding and pipeline
# (detail); the reason's free text stays in the feedback table
FEEDBACK = AUDIT_KIND

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
# kind -> (event type, action: C create / R read / E execute)
_TYPES: dict[str, tuple[dict[str, str], str]] = {
    ASSOCIATION: ({"system": _DCM, "code": "110104", "display": "DICOM Instances Transferred"}, "C"),
    PHI_READ: ({"system": _EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}, "R"),
    RESULT_SENT: ({"system": _DCM, "code": "110104", "display": "DICOM Instances Transferred"}, "R"),
    CONFIGURATION: ({"system": _DCM, "code": "110100", "display": "Application Activity"}, "E"),
    EXPORT: ({"system": _DCM, "code": "110106", "display": "Export"}, "R"),
    WEB_LOGIN: ({"system": _DCM, "code": "110114", "display": "User Authentication"}, "E"),
    # a reader's verdict adds to the record of the procedure (the reading of the study)
    FEEDBACK: ({"system": _DCM, "code": "110111", "display": "Procedure Record"}, "C"),
}
_SECURITY_ALERT = {"system": _DCM, "code": "110113", "display": "Security Alert"}
# AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure
_FAILED_OUTCOMES = {"rejected": "4", "aborted": "4", "unreachable": "4", "timeout": "4", "patient-not-found": "4",
                    "wrong-credentials": "4"}


def config_fingerprint(path: Path | None) -> str:
    """SHA-256 of the configuration file as read (empty without a file)."""
    if path is None or not path.exists():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_configuration(store: Store, path: Path | None, node_ae: str) -> bool:
    """Record the configuration the node starts with; returns True when it differs from the last start's."""
    fingerprint = config_fingerprint(path)
    last = store.audit_records(kind=CONFIGURATION)
    previous = json.loads(last[-1]["detail"]).get("sha256") if last else None
    changed = previous is not None and previous != fingerprint
    store.audit(CONFIGURATION, "changed" if changed else "loaded", actor=node_ae, source=str(path or ""),
                detail={"sha256": fingerprint, "previous_sha256": previous})
    return changed


def to_audit_event(row: dict[str, Any], node_ae: str) -> AuditEvent:
    """One audit row as a FHIR R4B AuditEvent."""
    event_type, action = _TYPES[row["kind"]]
    if row["kind"] == ASSOCIATION and row["outcome"] == "rejected":
        event_type = _SECURITY_ALERT
    detail = json.loads(row["detail"] or "{}")
    recorded = dt.datetime.fromtimestamp(float(row["ts"]), tz=dt.timezone.utc).isoformat()
    incoming = row["kind"] in (ASSOCIATION, FEEDBACK)  # the peer, or the reader, asked; else the node acted
    agents: list[dict[str, Any]] = [
        {"who": {"display": row["actor"] or "unknown"}, "requestor": incoming,
         "network": {"address": row["source"], "type": "1"} if row["source"] and incoming else None},
        {"who": {"display": node_ae}, "requestor": not incoming},
    ]
    entities: list[dict[str, Any]] = []
    if row["study_uid"]:
        entities.append({"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{row['study_uid']}"}},
                         "type": {"system": _DCM, "code": "110180", "display": "Study Instance UID"}})
    if detail:
        entities.append({"what": {"display": "details"}, "detail": [
            {"type": str(k), "valueString": json.dumps(v) if not isinstance(v, str) else v}
            for k, v in sorted(detail.items()) if v is not None
        ]})
    return AuditEvent.model_validate({
        "id": f"ainode-audit-{row['audit_id']}",
        "type": event_type,
        "action": action,
        "recorded": recorded,
        "outcome": _FAILED_OUTCOMES.get(row["outcome"], "0"),
        "outcomeDesc": row["outcome"],
        "agent": [{k: v for k, v in a.items() if v is not None} for a in agents],
        "source": {"observer": {"display": f"dicom-ai-node {node_ae}"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
        **({"entity": entities} if entities else {}),
    })


def export_bundle(rows: Sequence[dict[str, Any]], node_ae: str, as_transaction: bool = False) -> Bundle:
    """A Bundle of AuditEvents: ``collection`` to archive, or ``transaction`` to POST to an audit repository."""
    entries = []
    for row in rows:
        event = to_audit_event(row, node_ae)
        entry: dict[str, Any] = {"resource": event.model_dump(mode="json", exclude_none=True),
                                 "fullUrl": f"urn:uuid:{_uuid(row)}"}
        if as_transaction:
            entry["request"] = {"method": "POST", "url": "AuditEvent"}
        entries.append(entry)
    return Bundle.model_validate({"type": "transaction" if as_transaction else "collection", "entry": entries})


def _uuid(row: dict[str, Any]) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"urn:dicom-ai-node:audit:{row['audit_id']}:{row['ts']}"))
