"""The worklist's rules on their own: the site's priority rules on findings (which rule and finding decide, the
defaults, a finding no rule matches), the order (priority, then arrival) and the timers' words."""

from __future__ import annotations

import pytest

from node.config import ConfigError, parse_settings
from node.priority import DEFAULT_RULES, Priority, PriorityDecision, PriorityRule, RankedFinding, decide
from node.web.worklist import AiStatus, TopFinding, WorklistRow, duration, ordered, ranked, top_finding

MALIGNANT = ("SCT", "86049000")


def f(code: str, probability: float, pipeline: str = "lesion") -> RankedFinding:
    return RankedFinding("SCT", code, f"class {code}", probability, pipeline, "1.0")


def row(uid: str, arrived: float | None, priority: Priority) -> WorklistRow:
    return WorklistRow(uid, arrived, ("CR",), "", AiStatus.DONE, "", PriorityDecision(priority), None, 0, None, None,
                       None, None)


def test_default_rules_make_a_likely_malignant_finding_urgent_and_everything_else_routine() -> None:
    decision = decide([f("3898006", 0.95), f("86049000", 0.62)], DEFAULT_RULES)
    assert decision.priority == Priority.URGENT and decision.finding == f("86049000", 0.62)
    assert "class 86049000 0.62 (lesion 1.0; rule 'malignant, likely')" == decision.reason
    assert decide([f("86049000", 0.49)], DEFAULT_RULES).priority == Priority.ROUTINE
    assert decide([], DEFAULT_RULES) == PriorityDecision(Priority.ROUTINE)


def test_the_highest_tier_wins_then_the_most_probable_finding_and_pipelines_are_honoured() -> None:
    rules = (PriorityRule("any finding", Priority.URGENT, 0.3),
             PriorityRule("sure malignant", Priority.STAT, 0.9, frozenset({MALIGNANT}), frozenset({"lesion"})),
             PriorityRule("other pipeline", Priority.ASAP, 0.0, frozenset(), frozenset({"ct"})))
    assert decide([f("86049000", 0.95)], rules).rule == "sure malignant"
    assert decide([f("86049000", 0.95, "bone")], rules).rule == "any finding"  # the stat rule is for "lesion"
    assert decide([f("1", 0.4), f("2", 0.8)], rules).finding == f("2", 0.8)
    assert decide([f("1", 0.1, "ct"), f("2", 0.8)], rules).priority == Priority.ASAP


def test_top_finding_is_the_deciding_one_else_the_most_probable() -> None:
    findings = ranked([{"run_id": "r1", "class_scheme": "SCT", "class_value": "86049000", "class_meaning": "m",
                        "probability": 0.6},
                       {"run_id": "r2", "class_scheme": "SCT", "class_value": "3898006", "class_meaning": "b",
                        "probability": 0.95}], {"r1": ("lesion", "1.0"), "r2": ("other", "2.1")})
    assert top_finding(findings, decide(findings, DEFAULT_RULES)) == TopFinding("m", 0.6, "lesion", "1.0")
    assert top_finding(findings, PriorityDecision(Priority.ROUTINE)) == TopFinding("b", 0.95, "other", "2.1")
    assert top_finding([], PriorityDecision(Priority.ROUTINE)) is None


def test_rules_from_toml_and_their_errors_name_the_key() -> None:
    settings = parse_settings({"priority_rule": [
        {"name": "sure", "priority": "stat", "classes": ["SCT:86049000"], "min_probability": 0.9,
         "pipelines": ["radiograph-lesion"]}]})
    assert settings.priority_rules == (
        PriorityRule("sure", Priority.STAT, 0.9, frozenset({MALIGNANT}), frozenset({"radiograph-lesion"})),)
    assert parse_settings({}).priority_rules == DEFAULT_RULES
    for bad, words in [({"priority": "soon"}, "priority_rule[0].priority"),
                       ({"priority": "stat", "min_probability": 1.5}, "priority_rule[0].min_probability"),
                       ({"priority": "stat", "classes": ["86049000"]}, "SCHEME:VALUE"),
                       ({"min_probability": 0.5}, "priority_rule[0].priority is missing"),
                       ({"priority": "stat", "colour": "red"}, "unknown key(s) colour")]:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")):
            parse_settings({"priority_rule": [bad]})


def test_order_is_priority_then_arrival_and_nothing_is_dropped() -> None:
    rows = [row("late-urgent", 300.0, Priority.URGENT), row("early-routine", 100.0, Priority.ROUTINE),
            row("stat", 200.0, Priority.STAT), row("no-time", None, Priority.ROUTINE),
            row("early-urgent", 50.0, Priority.URGENT)]
    assert [r.study_uid for r in ordered(rows)] == [
        "stat", "early-urgent", "late-urgent", "early-routine", "no-time"]


def test_durations() -> None:
    assert duration(0.0, 42.4) == "42 s"
    assert duration(0.0, 185.0) == "3 min 05 s"
    assert duration(0.0, 3720.0) == "1 h 02 min"
    assert duration(None, 5.0) == ""
