"""The ``hl7-mllp`` destination: each SR of ours becomes an HL7 v2.5.1 ORU^R01, sent over MLLP to a RIS or worklist,
which answers with an ACK.

The message is built and the ACK parsed with hl7apy. One OBX per finding (the class as a coded observation, its
probability as the value, OBX-8 the abnormal flag its priority gives), one with the AI priority and its reason, the
priority itself in ORC-7, TQ1-9 and OBR-5; an amendment is a corrected result (OBR-25 and OBX-11 "C"). No database
access; one outcome per file: AA sent, AE/AR refused for good (with MSA-3's text), no answer retried.
"""

from __future__ import annotations

import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from time import monotonic
from typing import Sequence

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from hl7apy.v2_5_1 import ST

from node.config import DestinationSettings
from node.delivery import ObjectNotSent, SendOutcome
from node.delivery.report import ReportError, StudyReport, abnormal_flag, hl7v2_system, read_report
from node.priority import DEFAULT_RULES, PriorityRule, decide
from node.results import coding

START, END = b"\x0b", b"\x1c\x0d"  # MLLP framing (HL7 v2 Appendix C): <VT> message <FS><CR>
VERSION = "2.5.1"
REPORT_CODE = "18748-4^Diagnostic imaging study^LN"
PRIORITY_CODE = "AIN050^AI reading priority^99AINODE"  # our private scheme (node.results.coding.PRIVATE_SCHEME)
NOT_ANALYSED_CODE = f"{coding.NOT_ANALYSED.value}^{coding.NOT_ANALYSED.meaning}^{coding.PRIVATE_SCHEME}"
LESION = f"{coding.FINDING_TYPE.value}^{coding.FINDING_TYPE.meaning}^SCT"
ABSENT = f"{coding.ABSENT.value}^{coding.ABSENT.meaning}^SCT"
STUDY_UID_CODE = "110180^Study Instance UID^DCM"


class Hl7Error(ObjectNotSent):
    """One SR could not be sent as an ORU^R01, or its receiver did not accept it."""


def _text(value: str) -> str:
    """Free text as one HL7 v2 value: the delimiters escaped (hl7apy's ST), line breaks made spaces."""
    return str(ST(" ".join(value.split())).to_er7())


def _cwe(value: str, meaning: str, scheme: str) -> str:
    return f"{_text(value)}^{_text(meaning)}^{_text(hl7v2_system(scheme))}"


def _name(dicom_pn: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix, alphabetic group first) -> XPN (family^given^middle^suffix^prefix)."""
    parts = (dicom_pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (_text(p) for p in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def build_oru(report: StudyReport, rules: Sequence[PriorityRule], sending_application: str,
              settings: DestinationSettings, control_id: str, now: datetime | None = None) -> Message:
    """The ORU^R01 of one report; hl7apy checks it against v2.5.1's structure (strict validation)."""
    now = now or datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%d%H%M%S%z")  # with its offset: a DTM without one is the receiver's local time
    decision = decide(report.ranked, rules)
    status = "C" if report.amended else "F"
    m = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    m.msh.msh_3 = _text(sending_application)
    m.msh.msh_4 = _text(settings.sending_facility)
    m.msh.msh_5 = _text(settings.receiving_application)
    m.msh.msh_6 = _text(settings.receiving_facility)
    m.msh.msh_7 = stamp
    m.msh.msh_9 = "ORU^R01^ORU_R01"
    m.msh.msh_10 = control_id
    m.msh.msh_11 = "P"
    m.msh.msh_18 = "UNICODE UTF-8"

    result = m.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{_text(report.patient_id)}^^^^MR"
    pid.pid_5 = _name(report.patient_name)
    if report.patient_birth_date is not None:
        pid.pid_7 = report.patient_birth_date.strftime("%Y%m%d")
    if report.patient_sex in ("M", "F", "O"):
        pid.pid_8 = report.patient_sex

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"
    order.orc.orc_3 = _text(report.accession_number)
    order.orc.orc_5 = "CM"
    order.orc.orc_7 = f"^^^^^{decision.priority.hl7}"
    order.obr.obr_1 = "1"
    order.obr.obr_3 = _text(report.accession_number)
    order.obr.obr_4 = REPORT_CODE
    order.obr.obr_5 = decision.priority.hl7
    order.obr.obr_7 = stamp
    order.obr.obr_22 = stamp
    order.obr.obr_24 = "RAD"
    order.obr.obr_25 = status
    order.add_group("ORU_R01_TIMING_QTY").tq1.tq1_9 = f"{decision.priority.hl7}^{decision.priority.code}^HL70027"
    sequence = 0

    def observation(value_type: str, code: str, value: str, abnormal: str = "", sub_id: str = "") -> Group:
        nonlocal sequence
        sequence += 1
        group = order.add_group("ORU_R01_OBSERVATION")
        obx = group.obx
        obx.obx_1 = str(sequence)
        obx.obx_2 = value_type
        obx.obx_3 = code
        if sub_id:
            obx.obx_4 = sub_id
        obx.obx_5 = value
        if abnormal:
            obx.obx_8 = abnormal
        obx.obx_11 = status
        obx.obx_14 = stamp
        return group

    observation("ST", STUDY_UID_CODE, report.study_instance_uid)
    who = f"AI {report.pipeline} {report.pipeline_version}"
    if not report.analysed:
        group = observation("TX", NOT_ANALYSED_CODE, _text(f"{who} did not analyse this study"))
        group.add_segment("NTE").nte_3 = _text(report.not_analysed_reason)
    elif not report.findings:
        observation("CWE", LESION, ABSENT, "N")
    for n, reported in enumerate(report.findings, start=1):
        f = reported.finding
        group = observation("NM", _cwe(f.class_value, f.class_meaning, f.class_scheme), f"{f.probability:.4f}",
                            abnormal_flag(decide([f], rules).priority)[0], sub_id=str(n))
        group.obx.obx_6 = "1^probability^UCUM"
        site = reported.finding_site
        where = f", finding site {site.meaning} ({site.scheme_designator} {site.value})" if site else ""
        group.add_segment("NTE").nte_3 = _text(
            f"{reported.tracking_id}{where}: probability of {f.class_meaning} by {f.pipeline} {f.pipeline_version}; "
            f"tracking UID {reported.tracking_uid}")
    group = observation("TX", PRIORITY_CODE, _text(f"{decision.priority.code}: {decision.reason}"))
    group.add_segment("NTE").nte_3 = _text(
        f"{who}. Unverified machine output, not for diagnostic use until a reader confirms it."
        + (" Corrects an earlier AI result." if report.amended else ""))
    m.validate()
    return m


def _exchange(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    """Send one framed message and return the framed answer's content; OSError/TimeoutError when there is none."""
    deadline = monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(START + payload + END)
        answer = bytearray()
        while not answer.endswith(END):
            left = deadline - monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete ACK within {timeout:.0f} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the receiver closed the connection before a complete ACK")
            answer += chunk
    start = answer.find(START)
    return bytes(answer[start + 1 if start >= 0 else 0:-len(END)])


class Hl7MllpDestination:
    def __init__(self, settings: DestinationSettings, calling_ae: str,
                 priority_rules: Sequence[PriorityRule] = DEFAULT_RULES) -> None:
        self.settings = settings
        self.calling_ae = calling_ae  # MSH-3, the sending application
        self.priority_rules = tuple(priority_rules)

    def send(self, paths: list[Path], budget_seconds: float) -> list[SendOutcome]:
        deadline = monotonic() + budget_seconds
        outcomes = []
        for path in paths:
            left = deadline - monotonic()
            if left <= 0:
                outcomes.append(SendOutcome(path, False, "not attempted: the delivery budget was spent"))
                continue
            try:
                outcomes.append(SendOutcome(path, True, self._send_one(path, min(left, 30.0))))
            except Hl7Error as exc:
                outcomes.append(SendOutcome(path, False, str(exc), permanent=exc.permanent))
        return outcomes

    def _send_one(self, path: Path, timeout: float) -> str:
        try:
            report = read_report(path)
        except ReportError as exc:
            raise Hl7Error(f"{exc}; only the node's SRs go to an hl7-mllp destination: set its kinds = [\"sr\"]",
                           permanent=True) from exc
        control_id = uuid.uuid4().hex[:20]
        try:
            message = build_oru(report, self.priority_rules, self.calling_ae, self.settings, control_id)
        except HL7apyException as exc:
            raise Hl7Error(f"{path.name}: the ORU^R01 would not be valid HL7 v{VERSION}: {exc}", permanent=True) from exc
        where = self.settings.describe()
        try:
            answer = _exchange(self.settings.host, self.settings.port,
                               message.to_er7().encode("utf-8"), timeout)
        except (OSError, TimeoutError) as exc:
            raise Hl7Error(f"ORU^R01 to {where}: {type(exc).__name__}: {exc}") from exc
        try:
            ack = parse_message(answer.decode("utf-8", errors="replace").replace("\n", "\r").strip("\r"),
                                find_groups=False)
            code = str(ack.msa.msa_1.value)
            acked = str(ack.msa.msa_2.value)
            text = report.redact(str(ack.msa.msa_3.value)) if ack.msa.msa_3.value else ""
        except (HL7apyException, AttributeError, IndexError) as exc:
            raise Hl7Error(f"ORU^R01 to {where}: the answer is not an HL7 ACK ({type(exc).__name__})") from exc
        if acked != control_id:
            raise Hl7Error(f"ORU^R01 to {where}: the ACK is for message {acked!r}, not {control_id!r}")
        if code in ("AA", "CA"):
            return f"ORU^R01 accepted ({code}) by {where}"
        if code in ("AE", "AR", "CE", "CR"):
            return_text = f": {text}" if text else ""
            raise Hl7Error(f"ORU^R01 refused by {where} ({code}){return_text}; fix what it names and run "
                           "'dicom-ai-node outbox retry'", permanent=True)
        raise Hl7Error(f"ORU^R01 to {where}: unknown acknowledgment code {code!r}")
