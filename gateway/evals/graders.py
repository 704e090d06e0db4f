"""Testing criteria that need no model, as OpenAI defines them: ``string_check`` (``eq``, ``ne``, ``like``: the
input contains the reference, ``ilike``: the same ignoring case) and ``text_similarity`` with ``fuzzy_match``
(rapidfuzz's normalized similarity, passing at ``pass_threshold``). Each grades one sample into a score in [0, 1].
The model graders (``score_model``, ``label_model``) are ``gateway.evals.judge``'s.

Grading is work a tenant controls (fuzzy matching is quadratic in the text's length and holds the GIL), so
``grade_item`` runs in a worker process (``gateway.workers``): texts a fuzzy match would compare are at most
``bounds.GRADED_TEXT_CHARS`` long, and an item's criteria are graded within ``bounds.GRADING_SECONDS``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz

from gateway import bounds
from gateway.evals.templates import render


class GradingError(ValueError):
    """The item cannot be graded; ``code`` says why (the message is ours, safe to show the tenant)."""

    code = "grading_failed"


class TextTooLong(GradingError):
    code = "input_too_long"


class GradingTimedOut(GradingError):
    code = "grading_timeout"


@dataclass(frozen=True)
class Grade:
    name: str
    type: str
    passed: bool
    score: float
    details: dict[str, Any] = field(default_factory=dict)
    """What else the result shows (a model grader's label, and its judge's input, answer and usage as ``sample``)."""

    def result(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "passed": self.passed, "score": self.score, **self.details}


def _string_check(operation: str, text: str, reference: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.casefold() in text.casefold()  # ilike


def grade(criterion: dict[str, Any], namespaces: dict[str, dict[str, Any]]) -> Grade:
    """Raises ``TemplateError`` when the criterion names a variable the item or sample lacks, ``TextTooLong``
    when a fuzzy match would compare a text longer than ``bounds.GRADED_TEXT_CHARS``."""
    text = render(criterion["input"], namespaces)
    reference = render(criterion["reference"], namespaces)
    if criterion["type"] == "string_check":
        passed = _string_check(criterion["operation"], text, reference)
        return Grade(criterion["name"], "string_check", passed, 1.0 if passed else 0.0)
    if max(len(text), len(reference)) > bounds.GRADED_TEXT_CHARS:
        raise TextTooLong(
            f"{criterion['name'][:100]}: a fuzzy match compares texts of at most {bounds.GRADED_TEXT_CHARS} "
            "characters; this item's input or reference is longer."
        )
    score = fuzz.ratio(text, reference) / 100.0
    return Grade(criterion["name"], "text_similarity", score >= criterion["pass_threshold"], round(score, 6))


def grade_item(criteria: list[dict[str, Any]], namespaces: dict[str, dict[str, Any]], seconds: float) -> list[Grade]:
    """Every criterion's grade of one item, within ``seconds`` (else ``GradingTimedOut``). For a worker process."""
    deadline = time.monotonic() + seconds
    grades = []
    for criterion in criteria:
        if time.monotonic() > deadline:
            raise GradingTimedOut(f"Grading this item took longer than {seconds:g} seconds.")
        grades.append(grade(criterion, namespaces))
    return grades
