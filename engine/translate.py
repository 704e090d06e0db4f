"""Our engine values in vLLM's two dialects and back, for both backends: sampling options → the fields vLLM
takes (as ``SamplingParams`` in process, as a streamed ``/v1/completions`` body on token ids upstream), and
vLLM's outputs (``CompletionOutput`` in process, a stream chunk upstream) → ``CompletionDelta``.

vLLM's types are named for the type checker only: ``engine.vllm_engine`` stays the one module that runs vLLM."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from engine.protocol import (
    CompletionDelta,
    EngineError,
    FinishReason,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)

if TYPE_CHECKING:
    from vllm.outputs import CompletionOutput


class SamplingFields(TypedDict):
    """What to generate, under the names both ``SamplingParams`` and the OpenAI server take."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    ignore_eos: bool
    stop: NotRequired[list[str]]
    seed: NotRequired[int]
    logprobs: NotRequired[int]


STRUCTURED_OUTPUTS: dict[str, Any] = {"backend": "xgrammar", "disable_any_whitespace": True}
"""How every vLLM we run (in process, and the test replicas; operators start theirs with the same
``--structured-outputs-config``) enforces constraints: with xgrammar, whose features the gateway checks
(``gateway.inference.schema_features``), and compact JSON — with whitespace allowed, a small model may pad a JSON
answer with newlines until ``max_tokens`` cuts it, and every one of them is a billed token."""


class StructuredFields(TypedDict, total=False):
    """One constraint, under the names of vLLM's ``StructuredOutputsParams`` (its server's ``structured_outputs``)."""

    json: str
    json_object: bool
    regex: str
    choice: list[str]
    grammar: str


def structured_fields(structured: StructuredOutput) -> StructuredFields:
    if structured.kind == "json_object":
        return {"json_object": True}
    if structured.kind == "choice":
        return {"choice": [str(item) for item in json.loads(structured.spec)]}
    if structured.kind == "json":
        return {"json": structured.spec}
    if structured.kind == "regex":
        return {"regex": structured.spec}
    return {"grammar": structured.spec}


def sampling_fields(options: SamplingOptions) -> SamplingFields:
    """The options set; those left unset are left out (each side's own default applies)."""
    fields = SamplingFields(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        ignore_eos=options.ignore_eos,
    )
    if options.stop:
        fields["stop"] = list(options.stop)
    if options.seed is not None:
        fields["seed"] = options.seed
    if options.logprobs is not None:
        fields["logprobs"] = options.logprobs
    return fields


def completion_body(model: str, prompt_token_ids: list[int], options: SamplingOptions) -> dict[str, Any]:
    """A streamed ``/v1/completions`` on token ids, always with usage and the sampled token ids."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt_token_ids,
        **sampling_fields(options),
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # the exact tokens, counted as the replica counts them
    }
    if options.structured is not None:
        body["structured_outputs"] = structured_fields(options.structured)
    if options.cache_salt:
        body["cache_salt"] = options.cache_salt
    return body


def _finish_reason(finish: str | None) -> FinishReason | None:
    if finish is None:
        return None
    if finish == "stop":
        return "stop"
    if finish == "length":
        return "length"
    raise EngineError(f"generation ended unexpectedly ({finish})")


def _most_likely(alternatives: Iterable[tuple[str, float]], top_k: int | None) -> tuple[tuple[str, float], ...]:
    """vLLM lists the k most likely tokens plus the sampled one when it ranks lower: keep the k most likely."""
    return tuple(sorted(alternatives, key=lambda item: -item[1])[: top_k or 0])


def output_delta(completion: CompletionOutput, top_k: int | None) -> CompletionDelta:
    """One completion of an in-process ``RequestOutput`` (delta output kind)."""
    logprobs = []
    for token_id, candidates in zip(completion.token_ids, completion.logprobs or [], strict=False):
        if candidates is None:
            raise EngineError("the engine returned a token without its logprobs")
        chosen = candidates[token_id]
        top = _most_likely(((lp.decoded_token or "", lp.logprob) for lp in candidates.values()), top_k)
        logprobs.append(TokenLogprob(chosen.decoded_token or "", chosen.logprob, top))
    finish = _finish_reason(completion.finish_reason)
    return CompletionDelta(completion.index, completion.text, list(completion.token_ids), logprobs, finish)


def _chunk_logprobs(raw: dict[str, Any] | None, top_k: int | None) -> list[TokenLogprob]:
    if not raw:
        return []
    tokens = raw.get("tokens") or []
    chosen = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    result = []
    for token, logprob, top in zip(tokens, chosen, tops, strict=False):
        chosen_logprob = float("-inf") if logprob is None else float(logprob)
        result.append(TokenLogprob(token, chosen_logprob, _most_likely((top or {}).items(), top_k)))
    return result


def chunk_deltas(chunk: dict[str, Any], top_k: int | None) -> list[CompletionDelta]:
    """The choices of one upstream stream chunk, and from its usage (the closing chunk) a delta with no text that
    carries the prompt tokens the replica read from its prefix cache (vLLM reports them only when started with
    ``--enable-prompt-tokens-details``; a replica that does not is taken to have cached nothing)."""
    deltas = [
        CompletionDelta(
            index=int(choice.get("index", 0)),
            text=choice.get("text") or "",
            token_ids=list(choice.get("token_ids") or []),
            logprobs=_chunk_logprobs(choice.get("logprobs"), top_k),
            finish_reason=_finish_reason(choice.get("finish_reason")),
        )
        for choice in chunk.get("choices") or []
    ]
    cached = _cached_tokens(chunk.get("usage"))
    if cached is not None:
        deltas.append(CompletionDelta(0, "", [], cached_tokens=cached))
    return deltas


def _cached_tokens(usage: Any) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` of an upstream chunk, if it says."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return max(cached, 0) if isinstance(cached, int) else None
