"""The compile check of a structured-output constraint, run in a worker process (``gateway.workers``): the
constraint is compiled exactly as vLLM's xgrammar backend compiles it (``GrammarCompiler`` over the model's
tokenizer, the same call per kind), timed, and the compiled grammar thrown away. What is kept is the verdict:
compiles within its budget, is too complex, or is not a valid constraint.

The compiler (with its tokenizer info, the slow part to build) is made once per worker process and vocabulary.
xgrammar cannot be interrupted mid-compile: the caller's wait (budget plus the pool's grace) ends a compile that
runs on, by killing the worker."""

from __future__ import annotations

import json
import time
from functools import cache
from typing import Any, Literal

from engine.translate import STRUCTURED_OUTPUTS

Verdict = tuple[Literal["invalid", "too_complex"], str] | None
"""None: it compiles within the budget; else what is wrong and a message for the client."""

_BYTE_VOCABULARY = 256
_JSON_LAYOUT: dict[str, Any] = (
    {"any_whitespace": False, "separators": (",", ":")}
    if STRUCTURED_OUTPUTS["disable_any_whitespace"]
    else {"any_whitespace": True}
)
"""JSON laid out as the engine's xgrammar backend lays it out (``engine.translate.STRUCTURED_OUTPUTS``)."""
"""Without the model's tokenizer, a vocabulary of single bytes: the grammar is checked, the token masks' cost is
not."""


@cache
def _compiler(vocabulary: str | None) -> Any:
    import xgrammar

    if vocabulary is None:
        info = xgrammar.TokenizerInfo([bytes([i]).decode("latin-1") for i in range(_BYTE_VOCABULARY)])
    else:
        from transformers import AutoTokenizer

        info = xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(vocabulary))
    return xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)


def warm(vocabulary: str | None) -> None:
    """Make this process's compiler for ``vocabulary`` now (before any compile is timed)."""
    _compiler(vocabulary)


def choice_grammar(choices: list[str]) -> str:
    """The EBNF vLLM compiles a choice list to (one literal per choice, control characters escaped)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}

    def escape(text: str) -> str:
        return "".join(
            escapes.get(ch) or (f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch) for ch in text
        )

    return "root ::= " + " | ".join(f'"{escape(choice)}"' for choice in choices)


def _compile(compiler: Any, kind: str, spec: str) -> None:
    if kind == "json":
        compiler.compile_json_schema(spec, **_JSON_LAYOUT)
    elif kind == "json_object":
        compiler.compile_json_schema('{"type": "object"}', **_JSON_LAYOUT)
    elif kind == "regex":
        compiler.compile_regex(spec)
    elif kind == "choice":
        compiler.compile_grammar(choice_grammar(json.loads(spec)))
    else:  # a grammar: EBNF, or Lark where it is not EBNF (vLLM tells them apart by their look)
        try:
            compiler.compile_grammar(spec)
        except Exception:
            compiler.compile_lark(spec)


def check_compiles(kind: str, spec: str, vocabulary: str | None, budget: float) -> Verdict:
    """Compile ``spec`` of ``kind`` (see ``engine.protocol.StructuredOutput``) against ``vocabulary`` (a tokenizer
    dir; None: single bytes). A compile that takes longer than ``budget`` seconds is too complex even if it ends."""
    compiler = _compiler(vocabulary)
    started = time.monotonic()
    try:
        _compile(compiler, kind, spec)
    except Exception as exc:  # xgrammar's errors: RuntimeError, ValueError, its own
        return "invalid", str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
    elapsed = time.monotonic() - started
    if elapsed > budget:
        return "too_complex", f"compiling it took {elapsed:.1f} s"
    return None
