"""Speculative decoding as vLLM receives it (``speculative_config``, in process and on the replicas we start):
prompt-lookup (ngram) drafts, their bounds, and the batch size above which none are drafted (vLLM's dynamic
schedule, ``num_speculative_tokens_per_batch_size``). vLLM checks every draft with the model itself, so the tokens
emitted (and billed) are the ones the model would have produced alone."""

from __future__ import annotations

from typing import Any

from engine.settings import EngineSettings


def speculative_config(settings: EngineSettings) -> dict[str, Any] | None:
    """vLLM's ``speculative_config`` for a generating model under ``settings``; None: no speculation."""
    if settings.speculation == "off":
        return None
    tokens = settings.speculative_tokens
    config: dict[str, Any] = {
        "method": settings.speculation,
        "num_speculative_tokens": tokens,
        "prompt_lookup_min": settings.prompt_lookup_min,
        "prompt_lookup_max": settings.prompt_lookup_max,
    }
    if limit := settings.speculation_max_streams:
        # Batch sizes 1..limit draft up to `tokens`; from limit + 1 on (vLLM carries the last range to its
        # max_num_seqs), none.
        config["num_speculative_tokens_per_batch_size"] = [[1, limit, tokens], [limit + 1, limit + 1, 0]]
    return config


def describe(settings: EngineSettings) -> str:
    """The speculation in a word or a few, for the engine's start-up log and ``/ready``."""
    if settings.speculation == "off":
        return "off"
    streams = f", up to {settings.speculation_max_streams} streams" if settings.speculation_max_streams else ""
    return (
        f"{settings.speculation} k={settings.speculative_tokens} "
        f"lookup {settings.prompt_lookup_min}-{settings.prompt_lookup_max}{streams}"
    )
