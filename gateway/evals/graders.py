"""Testing criteria, as OpenAI defines them: ``string_check`` (``eq``, ``ne``, ``like``: the input contains the
reference, ``ilike``: the same ignoring case) and ``text_similarity`` with ``fuzzy_match`` (rapidfuzz's
normalized similarity, passing at ``pass_threshold``). Each grades one sample into a score in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rapidfuzz import fuzz

from gateway.evals.templates import render


@dataclass(frozen=True)
class Grade:
    name: str
    type: str
    passed: bool
    score: float

    def result(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "passed": self.passed, "score": self.score}


def _string_check(operation: str, text: str, reference: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.casefold() in text.casefold()  # ilike


def grade(criterion: dict[str, Any], namespaces: dict[str, dict[str, Any]]) -> Grade:
    """Raises ``TemplateError`` when the criterion names a variable the item or sample lacks."""
    text = render(criterion["input"], namespaces)
    reference = render(criterion["reference"], namespaces)
    if criterion["type"] == "string_check":
        passed = _string_check(criterion["operation"], text, reference)
        return Grade(criterion["name"], "string_check", passed, 1.0 if passed else 0.0)
    score = fuzz.ratio(text, reference) / 100.0
    return Grade(criterion["name"], "text_similarity", score >= criterion["pass_threshold"], round(score, 6))
