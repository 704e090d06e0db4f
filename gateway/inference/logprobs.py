"""Token logprobs in the two OpenAI shapes: chat (a ``content`` list) and completions (parallel lists)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.protocol import TokenLogprob


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(logprobs: Sequence[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {**_token_entry(lp.token, lp.logprob), "top_logprobs": [_token_entry(t, v) for t, v in lp.top]}
            for lp in logprobs
        ],
        "refusal": None,
    }


def completion_logprobs(logprobs: Sequence[TokenLogprob], text_offset: int) -> dict[str, Any]:
    """``text_offset`` is where the first of these tokens starts in the choice's text."""
    offsets = []
    for lp in logprobs:
        offsets.append(text_offset)
        text_offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [dict(lp.top) for lp in logprobs],
        "text_offset": offsets,
    }
