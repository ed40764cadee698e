"""The worklist's rules on their own: which finding sets the priority, the priority of a class the table does not
know, the order (priority, then arrival) and the timers' words."""

from __future__ import annotations

from node.web.worklist import (
    AiStatus, Priority, TopFinding, WorklistRow, duration, ordered, priority_of, top_finding,
)


def f(run: str, code: str, probability: float) -> dict[str, object]:
    return {"run_id": run, "class_scheme": "SCT", "class_value": code, "class_meaning": code,
            "probability": probability}


def row(uid: str, arrived: float, priority: Priority) -> WorklistRow:
    return WorklistRow(uid, arrived, ("CR",), "", AiStatus.DONE, "", priority, None, 0, None, None, None, None)


def test_the_most_probable_finding_decides() -> None:
    versions = {"r1": ("lesion", "1.0"), "r2": ("other", "2.1")}
    top = top_finding([f("r1", "86049000", 0.30), f("r2", "3898006", 0.95)], versions)
    assert top == TopFinding("3898006", 0.95, "other", "2.1", Priority.BENIGN)
    assert top_finding([], versions) is None
    assert priority_of("SCT", "86049000") == Priority.MALIGNANT
    assert priority_of("99LOCAL", "cyst") == Priority.INTERMEDIATE  # unknown: neither buried nor alarming


def test_order_is_priority_then_arrival_and_nothing_is_dropped() -> None:
    rows = [row("late-malignant", 300.0, Priority.MALIGNANT), row("early-none", 100.0, Priority.NONE),
            row("benign", 200.0, Priority.BENIGN), row("no-time", None, Priority.NONE),  # type: ignore[arg-type]
            row("early-malignant", 50.0, Priority.MALIGNANT)]
    assert [r.study_uid for r in ordered(rows)] == [
        "early-malignant", "late-malignant", "benign", "early-none", "no-time"]


def test_durations() -> None:
    assert duration(0.0, 42.4) == "42 s"
    assert duration(0.0, 185.0) == "3 min 05 s"
    assert duration(0.0, 3720.0) == "1 h 02 min"
    assert duration(None, 5.0) == ""
