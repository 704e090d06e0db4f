"""The one billing rule for how a request ends, used by every engine mode (in process and upstream) and by
every route: **the client pays for exactly what it received.**

* A completed request pays for its prompt and every token of its answer.
* A request the client abandons (it disconnected, or stopped reading a stream) pays for its prompt and the
  tokens it was sent: a stream, those streamed; a non-streamed request, none.
* A request that fails on our side (the engine or a model server broke, the gateway had to stop it) pays for
  its prompt and the tokens streamed if any output reached the client first, and nothing otherwise
  (non-streamed failures included: the client got an error, not an answer).

Either way its ledger record is written, journaled like any other."""

from __future__ import annotations


def charged_tokens(outcome: str, prompt_tokens: int, delivered_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens to charge for a request that ended with ``outcome`` ("completed",
    "aborted" by the client, "failed" on our side) after ``delivered_tokens`` completion tokens reached the
    client."""
    if outcome == "failed" and delivered_tokens == 0:
        return 0, 0
    return prompt_tokens, delivered_tokens
