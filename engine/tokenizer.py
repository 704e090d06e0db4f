"""The model's own tokenizer and chat template (Hugging Face ``transformers``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


class HFTokenizer:
    """Wraps a Hugging Face tokenizer loaded from a model dir (or a hub id, where the hub is reachable)."""

    def __init__(self, model_dir: Path | str) -> None:
        from transformers import AutoTokenizer

        self._tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
        if not self._tok.chat_template:
            raise ValueError(f"{model_dir} has no chat template")
        # A fast tokenizer's Rust core gives the same ids for half the per-call cost of the Python wrapper.
        self._rust: Any = self._tok.backend_tokenizer if self._tok.is_fast else None

    def encode(self, text: str) -> list[int]:
        if self._rust is not None:
            return list(self._rust.encode(text, add_special_tokens=False).ids)
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(token_ids), skip_special_tokens=True))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return str(self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    @property
    def vocab_size(self) -> int:
        return len(self._tok)
