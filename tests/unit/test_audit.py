"""Audit trail: records become valid FHIR R4B AuditEvents (rejected associations as security alerts); a changed
configuration is detected between starts; no patient identifiers are written."""

from __future__ import annotations

import json
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle

from node.audit import ASSOCIATION, PHI_READ, RESULT_SENT, export_bundle, record_configuration
from node.store import Store


def test_records_export_as_fhir_audit_events(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.audit(ASSOCIATION, "released", actor="MODALITY", source="10.0.0.7:50123",
                detail={"called_ae": "AINODE", "instances_stored": 12})
    store.audit(ASSOCIATION, "rejected", actor="INTRUDER", source="10.6.6.6:4000", detail={"called_ae": "AINODE"})
    store.audit(PHI_READ, "ok", actor="AINODE", source="https://ehr/fhir", study_uid="1.2.3", detail={"labs": 4})
    store.audit(RESULT_SENT, "sent", actor="PACS", source="pacs:104", study_uid="1.2.3",
                detail={"sop_instance_uid": "2.25.1"})
    bundle = export_bundle(store.audit_records(), "AINODE", as_transaction=True)
    parsed = Bundle.model_validate_json(bundle.model_dump_json())  # round trip through the R4B model
    events = [e.resource for e in parsed.entry]
    assert [e.type.code for e in events] == ["110104", "110113", "rest", "110104"]
    assert [e.outcome for e in events] == ["0", "4", "0", "0"]
    assert events[0].agent[0].network.address == "10.0.0.7:50123" and events[0].agent[0].requestor
    assert all(e.request.method == "POST" for e in parsed.entry)
    details = {d.type: d.valueString for d in events[0].entity[-1].detail}
    assert details["instances_stored"] == "12"


def test_a_changed_configuration_is_recorded(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    config = tmp_path / "node.toml"
    config.write_text("[node]\nport = 11112\n")
    assert not record_configuration(store, config, "AINODE")
    assert not record_configuration(store, config, "AINODE")
    config.write_text("[node]\nport = 11113\n")
    assert record_configuration(store, config, "AINODE")
    rows = store.audit_records(kind="configuration")
    assert [r["outcome"] for r in rows] == ["loaded", "loaded", "changed"]
    assert json.loads(rows[-1]["detail"])["previous_sha256"] == json.loads(rows[0]["detail"])["sha256"]
