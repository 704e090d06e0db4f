"""Our engine interface in vLLM's OpenAI dialect and back: sampling options → a streamed ``/v1/completions``
body on token ids (always with usage and the sampled token ids), its chunks → ``CompletionDelta`` batches."""

from __future__ import annotations

from typing import Any

from engine.protocol import CompletionDelta, EngineError, SamplingOptions, TokenLogprob


def completion_body(model: str, prompt_token_ids: list[int], options: SamplingOptions) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt_token_ids,
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "n": options.n,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "ignore_eos": options.ignore_eos,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,  # the exact tokens, counted as the replica counts them
    }
    if options.stop:
        body["stop"] = list(options.stop)
    if options.seed is not None:
        body["seed"] = options.seed
    if options.logprobs is not None:
        body["logprobs"] = options.logprobs
    return body


def _logprobs(raw: dict[str, Any] | None, top_k: int | None) -> list[TokenLogprob]:
    if not raw:
        return []
    tokens = raw.get("tokens") or []
    chosen = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    result = []
    for token, logprob, top in zip(tokens, chosen, tops, strict=False):
        # vLLM lists the k most likely plus the sampled token when it ranks lower: keep the k most likely.
        ranked = sorted((top or {}).items(), key=lambda item: -item[1])[: top_k or 0]
        result.append(TokenLogprob(token, float(logprob if logprob is not None else float("-inf")), tuple(ranked)))
    return result


def chunk_deltas(chunk: dict[str, Any], top_k: int | None) -> list[CompletionDelta]:
    deltas = []
    for choice in chunk.get("choices") or []:
        finish = choice.get("finish_reason")
        if finish not in (None, "stop", "length"):
            raise EngineError(f"generation ended unexpectedly ({finish})")
        deltas.append(
            CompletionDelta(
                index=int(choice.get("index", 0)),
                text=choice.get("text") or "",
                token_ids=list(choice.get("token_ids") or []),
                logprobs=_logprobs(choice.get("logprobs"), top_k),
                finish_reason=finish,
            )
        )
    return deltas
