"""The model's own tokenizer and chat template (Hugging Face ``transformers``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        conversation = [dict(message) for message in messages]
        tool_list = [dict(tool) for tool in tools] if tools else None
        return str(
            self._tok.apply_chat_template(conversation, tools=tool_list, tokenize=False, add_generation_prompt=True)
        )

    @property
    def hf(self) -> Any:
        """The Hugging Face tokenizer itself, for what takes one (vLLM's tool call parsers)."""
        return self._tok

    @property
    def renders_tools(self) -> bool:
        """Whether the template refers to ``tools`` (Hugging Face's own test for tool-use templates)."""
        template = self._tok.chat_template
        return isinstance(template, str) and re.search(r"\btools\b", template) is not None

    @property
    def vocab_size(self) -> int:
        return len(self._tok)
