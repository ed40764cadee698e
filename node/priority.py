"""AI priority: the site's rules from findings (class, probability, pipeline) to a reading priority.

The four tiers are FHIR's request-priority codes (routine < urgent < asap < stat), which HL7 v2 and worklists
understand too. Rules are data, from ``[[priority_rule]]`` tables in the node's TOML; without any, DEFAULT_RULES
apply. A study's priority is the highest tier any rule gives any of its current findings; a study without a
finding, or whose findings no rule matches, is routine. The decision keeps the finding and the rule that set it,
so a worklist, a FHIR Task and an HL7 message can all say why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterable, Sequence


class Priority(IntEnum):
    """Higher sorts first. The names are FHIR's request-priority codes (http://hl7.org/fhir/request-priority)."""

    ROUTINE = 1
    URGENT = 2
    ASAP = 3
    STAT = 4

    @property
    def code(self) -> str:
        return self.name.lower()

    @property
    def hl7(self) -> str:
        """HL7 v2 priority (table 0027, as in ORC-7/TQ1-9 and OBR-5): S stat, A asap, R routine; urgent has no
        code of its own there and is sent as A (as soon as possible)."""
        return {Priority.STAT: "S", Priority.ASAP: "A", Priority.URGENT: "A", Priority.ROUTINE: "R"}[self]

    @classmethod
    def parse(cls, text: str) -> "Priority":
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"{text!r} is not a priority: use one of "
                             f"{', '.join(p.code for p in cls)}") from None


@dataclass(frozen=True)
class RankedFinding:
    """What a rule looks at: a finding's class, its probability and the pipeline (and version) that made it."""

    class_scheme: str
    class_value: str
    class_meaning: str
    probability: float
    pipeline: str
    pipeline_version: str


@dataclass(frozen=True)
class PriorityRule:
    """A finding of one of ``classes`` (``(scheme, value)``; empty: any class) from one of ``pipelines`` (empty: any)
    with probability at least ``min_probability`` makes the study ``priority``."""

    name: str
    priority: Priority
    min_probability: float = 0.0
    classes: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    pipelines: frozenset[str] = field(default_factory=frozenset)

    def matches(self, finding: RankedFinding) -> bool:
        return (finding.probability >= self.min_probability
                and (not self.classes or (finding.class_scheme, finding.class_value) in self.classes)
                and (not self.pipelines or finding.pipeline in self.pipelines))


@dataclass(frozen=True)
class PriorityDecision:
    priority: Priority
    finding: RankedFinding | None = None  # the finding that set it (None: routine, nothing matched)
    rule: str = ""  # the rule's name

    @property
    def reason(self) -> str:
        if self.finding is None:
            return "no finding a priority rule matches"
        f = self.finding
        return (f"{f.class_meaning} {f.probability:.2f} ({f.pipeline} {f.pipeline_version}; "
                f"rule {self.rule!r})")


# Malignant classes of the shipped pipelines: SCT 86049000 (radiograph-lesion) and the invasive ICD-O-3 /3
# morphologies of chest-ct-nodule. A site writes its own [[priority_rule]] tables to change or extend these.
MALIGNANT_CLASSES = frozenset({("SCT", "86049000"), ("ICDO3", "8140/3"), ("ICDO3", "8256/3")})
DEFAULT_RULES: tuple[PriorityRule, ...] = (
    PriorityRule("malignant, likely", Priority.URGENT, 0.5, MALIGNANT_CLASSES),
)


def decide(findings: Iterable[RankedFinding], rules: Sequence[PriorityRule]) -> PriorityDecision:
    """The highest tier any rule gives any finding; among findings of that tier, the most probable one sets the
    reason (the first matching rule of that tier names it)."""
    best: PriorityDecision | None = None
    for finding in findings:
        for rule in rules:
            if not rule.matches(finding):
                continue
            candidate = PriorityDecision(rule.priority, finding, rule.name)
            if best is None or (rule.priority, finding.probability) > (best.priority, best.finding.probability
                                                                       if best.finding else -1.0):
                best = candidate
    return best if best is not None else PriorityDecision(Priority.ROUTINE)


def parse_rules(tables: object, section: str = "priority_rule") -> tuple[PriorityRule, ...]:
    """``[[priority_rule]]`` tables -> rules; a ValueError names the table, the key and the fix."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(f"{section} must be an array of tables: write each rule as '[[{section}]]' with "
                         f"priority, and optionally classes, min_probability, pipelines and name")
    rules = []
    for i, table in enumerate(tables):
        where = f"{section}[{i}]"
        unknown = set(table) - {"name", "priority", "classes", "min_probability", "pipelines"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; the keys are name, priority, "
                             f"classes, min_probability, pipelines")
        if "priority" not in table:
            raise ValueError(f"{where}.priority is missing: set one of routine, urgent, asap, stat")
        try:
            priority = Priority.parse(str(table["priority"]))
        except ValueError as exc:
            raise ValueError(f"{where}.priority = {exc}") from None
        probability = table.get("min_probability", 0.0)
        if isinstance(probability, bool) or not isinstance(probability, (int, float)) or not 0 <= probability <= 1:
            raise ValueError(f"{where}.min_probability = {probability!r}: give a number from 0 to 1")
        classes = table.get("classes", [])
        if not isinstance(classes, list) or not all(isinstance(c, str) and ":" in c for c in classes):
            raise ValueError(f"{where}.classes = {classes!r}: list codes as \"SCHEME:VALUE\", e.g. "
                             f"[\"SCT:86049000\"] (empty or left out: any class)")
        pipelines = table.get("pipelines", [])
        if not isinstance(pipelines, list) or not all(isinstance(p, str) and p for p in pipelines):
            raise ValueError(f"{where}.pipelines = {pipelines!r}: list pipeline names, e.g. [\"radiograph-lesion\"] "
                             f"(empty or left out: any pipeline)")
        name = table.get("name", f"rule {i + 1}")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}.name = {name!r}: give the rule a name (it is shown as the priority's reason)")
        rules.append(PriorityRule(
            name=name.strip(), priority=priority, min_probability=float(probability),
            classes=frozenset(tuple(c.split(":", 1)) for c in classes),  # type: ignore[misc]
            pipelines=frozenset(pipelines),
        ))
    return tuple(rules)
