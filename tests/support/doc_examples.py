"""The code examples of the documentation (``README.md`` and ``docs/``), as a reader copies them: each fenced
block with its page, line, language and mark. A block that calls the API is marked by an HTML comment on the line
before it (invisible on GitHub and on the site):

    <!-- example: run -->                      run by tests/test_docs_examples.py against a real gateway
    <!-- example: slow: REASON -->             run there too, in ``make test-slow`` only (it trains a model, ...)
    <!-- example: skip: REASON -->             not run, and why (it needs Docker, a GPU, ...)

The blocks of a page run in order, the Python ones in one namespace (a page reads as one session), as a reader
would run them: against a gateway at ``http://127.0.0.1:8000`` with the key ``sk-...`` and the tenant ``acme``,
which the test replaces with its own gateway, key and a tenant name of the page's own. The files the examples open
(``train.jsonl``, ``test.jsonl``, ...) are the test's own, in the working directory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
MARK = re.compile(r"<!-- example: (?:(?P<run>run)|slow: (?P<slow>[^>]+?)|skip: (?P<reason>[^>]+?)) -->\s*$")
# What an API call looks like in Python, shell or a CLI session.
CALLS_API = re.compile(r"client\.|OpenAI\(|ChatOpenAI\(|\bcurl\b|\bllmaas\b|httpx\.|/v1/|/admin/v1")
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    lang: str
    code: str
    run: bool
    slow_reason: str | None
    """Why it runs only in ``make test-slow`` (it trains a model for minutes): None for the others."""
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def slow(self) -> bool:
        return self.slow_reason is not None

    @property
    def marked(self) -> bool:
        return self.run or self.slow or self.skip_reason is not None

    @property
    def calls_api(self) -> bool:
        return bool(CALLS_API.search(self.code))


def examples(page: Path) -> list[Example]:
    """Every fenced block of ``page``, in order, with the mark on the line before it (if any)."""
    text = page.read_text()
    found = []
    for block in FENCE.finditer(text):
        before = text[: block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        found.append(
            Example(
                page=page,
                line=text.count("\n", 0, block.start()) + 1,
                lang=block["lang"],
                code=block["code"],
                run=bool(mark and mark["run"]),
                slow_reason=mark["slow"].strip() if mark and mark["slow"] else None,
                skip_reason=mark["reason"].strip() if mark and mark["reason"] else None,
            )
        )
    return found
