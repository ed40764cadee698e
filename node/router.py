"""Routing: which pipelines a study goes to, and which of its instances each pipeline sees.

A rule matches an instance when every one of its patterns (DICOM keyword -> regex) matches that instance.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from node.config import RouteRule

# The instance index stores these attributes under short column names.
_COLUMN = {
    "Modality": "modality",
    "BodyPartExamined": "body_part",
    "SOPClassUID": "sop_class_uid",
    "SeriesDescription": "series_description",
}


def rule_matches(rule: RouteRule, instance: Mapping[str, Any]) -> bool:
    """True when every pattern of ``rule`` is found (re.search) in the instance's attribute."""
    for keyword, pattern in rule.patterns.items():
        value = str(instance.get(_COLUMN[keyword]) or "")
        if re.search(pattern, value) is None:
            return False
    return True


def pipelines_for(instances: Iterable[Mapping[str, Any]], routes: Sequence[RouteRule]) -> list[str]:
    """Pipelines (in rule order, without repeats) whose rule matches at least one instance of the study."""
    rows = list(instances)
    chosen: list[str] = []
    for rule in routes:
        if rule.pipeline not in chosen and any(rule_matches(rule, row) for row in rows):
            chosen.append(rule.pipeline)
    return chosen


def instances_for(
    pipeline: str, instances: Iterable[Mapping[str, Any]], routes: Sequence[RouteRule]
) -> list[Mapping[str, Any]]:
    """The instances any rule of ``pipeline`` matches: a pipeline never sees series its rules did not select."""
    rules = [r for r in routes if r.pipeline == pipeline]
    return [row for row in instances if any(rule_matches(rule, row) for rule in rules)]
