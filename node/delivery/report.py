"""One of the node's own SRs as a typed report for the worklist destinations (``fhir``, ``hl7-mllp``): who and what
it is about, which pipeline said it, its findings ranked for the priority rules, and whether it amends an earlier SR.

It reads the file only; the TID 1500 content is read by ``node.results.sr.read_findings`` (the one reader of our
SR), the patient and study modules here. No network, no database.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from node.priority import Priority, RankedFinding
from node.results.sr import read_findings
from pipelines.base import CodedClass


class ReportError(ValueError):
    """The file is not an SR this node wrote (or cannot be read): sending it again cannot help."""


@dataclass(frozen=True)
class ReportedFinding:
    finding: RankedFinding  # class, probability, pipeline and version: what the priority rules look at
    tracking_uid: str  # TID 1410 Tracking Unique Identifier: the finding's identity across amendments
    tracking_id: str  # e.g. "lesion 1"
    finding_site: CodedClass | None = None
    laterality: str = ""  # "R", "L" or "" (not stated)


@dataclass(frozen=True)
class StudyReport:
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    study_instance_uid: str
    accession_number: str
    patient_id: str
    patient_name: str  # DICOM PN as written, e.g. "Doe^Jane"
    patient_birth_date: date | None
    patient_sex: str  # "M", "F", "O" or ""
    study_description: str
    pipeline: str
    pipeline_version: str
    findings: tuple[ReportedFinding, ...]
    not_analysed_reason: str  # "" when the pipeline analysed the study; else why it could not
    amends: tuple[str, ...]  # SOP Instance UIDs of the SRs this one amends (Predecessor Documents Sequence)

    @property
    def analysed(self) -> bool:
        return not self.not_analysed_reason

    @property
    def amended(self) -> bool:
        return bool(self.amends)

    @property
    def ranked(self) -> tuple[RankedFinding, ...]:
        return tuple(f.finding for f in self.findings)

    def redact(self, text: str) -> str:
        """``text`` (a peer's error message, bound for logs and the outbox) without this report's patient ID, name,
        birth date or accession number: peers quote what they refuse."""
        values = [(self.patient_id, "<patient id>"), (self.accession_number, "<accession>")]
        values += [(part, "<name>") for part in re.split(r"[\^=]", self.patient_name) if len(part.strip()) >= 2]
        if self.patient_birth_date is not None:
            values += [(self.patient_birth_date.strftime("%Y%m%d"), "<birth date>"),
                       (self.patient_birth_date.isoformat(), "<birth date>")]
        for value, label in sorted(values, key=lambda v: -len(v[0])):
            if len(value.strip()) >= 2:
                text = re.sub(re.escape(value.strip()), label, text, flags=re.IGNORECASE)
        return text


# DICOM coding scheme designators -> FHIR code system URIs (terminology.hl7.org's names; DICOM PS3.16 8.2) and HL7 v2
# coding systems (table 0396; "99zzz" is v2's own form of a local scheme, as our private "99AINODE" already is).
FHIR_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "ICDO3": "http://terminology.hl7.org/CodeSystem/icd-o-3",
    "UCUM": "http://unitsofmeasure.org",
}
HL7V2_SYSTEMS = {"SCT": "SCT", "LN": "LN", "DCM": "DCM", "ICDO3": "ICDO", "UCUM": "UCUM"}


def fhir_system(scheme: str) -> str:
    """The FHIR system of a DICOM coding scheme; a private one gets a URN of this node's (stable, never a guess)."""
    return FHIR_SYSTEMS.get(scheme, f"urn:dicom-ai-node:coding-scheme:{scheme}")


def hl7v2_system(scheme: str) -> str:
    return HL7V2_SYSTEMS.get(scheme, scheme if scheme.startswith("99") else f"99{scheme}"[:20])


def abnormal_flag(priority: Priority) -> tuple[str, str]:
    """A finding's abnormal flag (HL7 v2 table 0078 = FHIR's v3 ObservationInterpretation codes) from the priority the
    rules give it alone: escalated (urgent and above) is critical abnormal "AA", any other finding abnormal "A".
    ("N", normal, is for a study analysed with nothing found.)"""
    return ("AA", "Critical abnormal") if priority >= Priority.URGENT else ("A", "Abnormal")


def _birth_date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None  # empty or malformed DA: unknown, never guessed
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def report_from_dataset(sr: Dataset) -> StudyReport:
    """The report an SR of ours states; a ReportError when it is not one."""
    try:
        summary = read_findings(sr)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ReportError(f"not an SR written by this node (TID 1500 as node.results.sr writes it): {exc}") from exc
    if summary.analysed:
        reason = ""
    elif summary.instances_excluded:
        why = Counter(e.reason + (f" ({e.detail})" if e.detail else "") for e in summary.instances_excluded)
        reason = "; ".join(f"{n} instance(s) {text}" for text, n in why.items())
    else:
        reason = "no input could be analysed"
    if summary.inputs_missing and not summary.analysed:
        reason += f"; inputs missing: {', '.join(summary.inputs_missing)}"
    findings = tuple(
        ReportedFinding(
            finding=RankedFinding(f.class_scheme, f.class_value, f.class_meaning, f.probability,
                                  summary.algorithm_name, summary.algorithm_version),
            tracking_uid=f.tracking_uid, tracking_id=f.tracking_id, finding_site=f.finding_site,
            laterality=f.laterality,
        )
        for f in summary.findings
    )
    return StudyReport(
        sr_sop_instance_uid=summary.sop_instance_uid,
        sr_series_instance_uid=str(sr.SeriesInstanceUID),
        study_instance_uid=summary.study_instance_uid,
        accession_number=str(sr.get("AccessionNumber", "") or ""),
        patient_id=str(sr.get("PatientID", "") or ""),
        patient_name=str(sr.get("PatientName", "") or ""),
        patient_birth_date=_birth_date(sr.get("PatientBirthDate")),
        patient_sex=str(sr.get("PatientSex", "") or "").upper(),
        study_description=str(sr.get("StudyDescription", "") or ""),
        pipeline=summary.algorithm_name,
        pipeline_version=summary.algorithm_version,
        findings=findings,
        not_analysed_reason=reason,
        amends=summary.predecessors,
    )


def read_report(path: Path) -> StudyReport:
    """The report of one SR file of ours; a ReportError (naming the file) when it cannot be read as one."""
    try:
        sr = dcmread(path)
    except (OSError, InvalidDicomError) as exc:
        raise ReportError(f"{path.name}: cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    try:
        return report_from_dataset(sr)
    except ReportError as exc:
        raise ReportError(f"{path.name}: {exc}") from exc
