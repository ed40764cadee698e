"""The hl7-mllp destination against hl7apy's MLLP server (tests/support/mllp_listener.py): the ORU^R01 as the
receiver parses it (patient, order, priority in ORC-7/TQ1/OBR-5, one OBX per finding with its OBX-8 flag, the
priority's reason, F or C for an amendment, the not-analysed statement), and what each answer means to the outbox."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from test_delivery_report import write_amendment, write_empty_sr, write_findings_sr, write_not_analysed_sr

from mllp_listener import MllpListener
from node.config import DestinationSettings, OutboxSettings
from node.delivery import open_destination
from node.delivery.hl7 import Hl7MllpDestination
from node.localpeers.orthanc import free_port


def destination(port: int) -> Hl7MllpDestination:
    settings = DestinationSettings(name="ris", type="hl7-mllp", kinds=frozenset({"sr"}), retry=OutboxSettings(),
                                   host="127.0.0.1", port=port, sending_facility="AI-NODE",
                                   receiving_application="RIS", receiving_facility="RADIOLOGY")
    plugin = open_destination(settings, "AINODE")
    assert isinstance(plugin, Hl7MllpDestination)
    return plugin


def observations(message: Any) -> list[Any]:
    order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    return list(order.ORU_R01_OBSERVATION)


def test_oru_for_findings_parsed_by_the_receiver(tmp_path: Path) -> None:
    with MllpListener() as ris:
        (outcome,) = destination(ris.port).send([write_findings_sr(tmp_path)], 30)
        assert outcome.ok, outcome.detail
        assert "accepted (AA)" in outcome.detail
        (message,) = ris.messages
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01" and message.msh.msh_12.to_er7() == "2.5.1"
    assert [message.msh.msh_3.to_er7(), message.msh.msh_4.to_er7(), message.msh.msh_5.to_er7(),
            message.msh.msh_6.to_er7()] == ["AINODE", "AI-NODE", "RIS", "RADIOLOGY"]
    result = message.ORU_R01_PATIENT_RESULT
    pid = result.ORU_R01_PATIENT.pid
    assert pid.pid_3.cx_1.to_er7() == "PAT-0042" and pid.pid_5.to_er7() == "Doe^Jane"
    assert (pid.pid_7.to_er7(), pid.pid_8.to_er7()) == ("19640521", "F")
    order = result.ORU_R01_ORDER_OBSERVATION
    assert order.orc.orc_1.to_er7() == "RE" and order.orc.orc_7.to_er7() == "^^^^^A"  # urgent is sent as A
    assert order.obr.obr_3.to_er7() == "ACC0042" and order.obr.obr_25.to_er7() == "F"
    assert order.obr.obr_5.to_er7() == "A"
    assert order.ORU_R01_TIMING_QTY.tq1.tq1_9.to_er7() == "A^urgent^HL70027"
    study, malignant, benign, priority = observations(message)
    assert study.obx.obx_5.to_er7() == "1.2.826.0.1.3680043.8.498.11"
    assert malignant.obx.obx_2.to_er7() == "NM"
    assert malignant.obx.obx_3.to_er7() == "86049000^Malignant neoplasm, primary^SCT"
    assert malignant.obx.obx_5.to_er7() == "0.8700"
    assert malignant.obx.obx_8.to_er7() == "AA" and benign.obx.obx_8.to_er7() == "A"
    assert malignant.obx.obx_11.to_er7() == "F"
    assert "finding site Chest" in malignant.nte.nte_3.to_er7()
    assert priority.obx.obx_2.to_er7() == "TX"
    assert priority.obx.obx_5.to_er7().startswith("urgent: Malignant neoplasm, primary 0.87")
    assert message.msh.msh_7.to_er7().endswith("+0000")  # UTC, said so


def test_amendment_is_a_correction_and_not_analysed_says_so(tmp_path: Path) -> None:
    original = write_findings_sr(tmp_path)
    with MllpListener() as ris:
        outcomes = destination(ris.port).send(
            [write_amendment(tmp_path, original), write_not_analysed_sr(tmp_path), write_empty_sr(tmp_path)], 30)
        assert all(o.ok for o in outcomes), outcomes
        amended, skipped, empty = ris.messages
    order = amended.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
    assert order.obr.obr_25.to_er7() == "C"
    assert {o.obx.obx_11.to_er7() for o in observations(amended)} == {"C"}
    statement = observations(skipped)[1]
    assert statement.obx.obx_3.to_er7() == "AIN030^Instance not analysed^99AINODE"
    assert "2 instance(s) outside-intended-use (lateral view)" in statement.nte.nte_3.to_er7()
    assert skipped.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION.obr.obr_5.to_er7() == "R"
    nothing = observations(empty)[1]
    assert (nothing.obx.obx_5.to_er7(), nothing.obx.obx_8.to_er7()) == ("272519000^Absent^SCT", "N")


def test_refusals_are_permanent_silence_and_absence_are_retried(tmp_path: Path) -> None:
    path = write_findings_sr(tmp_path)
    with MllpListener() as ris:
        plugin = destination(ris.port)
        ris.ack_code, ris.ack_text = "AE", "Unknown patient PAT-0042"
        (outcome,) = plugin.send([path], 30)
        assert not outcome.ok and outcome.permanent and "refused" in outcome.detail
        assert "(AE): Unknown patient <patient id>" in outcome.detail  # no identifiers in the log or outbox
        ris.ack_code, ris.ack_text = "AR", ""
        assert plugin.send([path], 30)[0].permanent
        ris.silent = True
        started = time.monotonic()
        (outcome,) = plugin.send([path], 1.0)  # the budget bounds the wait for the ACK
        assert time.monotonic() - started < 3
        assert not outcome.ok and not outcome.permanent and "TimeoutError" in outcome.detail
    (outcome,) = destination(free_port()).send([path], 5)  # nobody listening
    assert not outcome.ok and not outcome.permanent and "ConnectionRefusedError" in outcome.detail


def test_an_ack_for_another_message_is_not_an_ack(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\x0bMSH|^~\\&|RIS||||20260101||ACK|1|P|2.5.1\rMSA|AA|someone-else\r\x1c\x0d")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        (outcome,) = destination(port).send([write_findings_sr(tmp_path)], 10)
    finally:
        thread.join(5)
        server.close()
    assert not outcome.ok and not outcome.permanent and "is for message 'someone-else'" in outcome.detail
