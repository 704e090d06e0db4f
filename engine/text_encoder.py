"""An embedding model's own tokenizer (Hugging Face ``transformers``): text to the ids the model embeds, with the
model's special tokens (``[CLS] ... [SEP]`` for a BERT), as sentence-transformers and vLLM tokenize them. No chat
template: an embedding model has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class HFTextEncoder:
    """Wraps the tokenizer of a model dir (or a hub id, where the hub is reachable)."""

    def __init__(self, model_dir: Path | str) -> None:
        from transformers import AutoTokenizer

        self._tok: Any = AutoTokenizer.from_pretrained(str(model_dir))
        # A fast tokenizer's Rust core gives the same ids for half the per-call cost of the Python wrapper. A
        # sentence-transformers tokenizer.json may pad and truncate (to 128 for all-MiniLM-L6-v2): every id of
        # the text is counted, and an input over the context refused, never cut silently.
        self._rust: Any = None
        if self._tok.is_fast:
            self._rust = self._tok.backend_tokenizer
            self._rust.no_padding()
            self._rust.no_truncation()

    def encode(self, text: str) -> list[int]:
        if self._rust is not None:
            return list(self._rust.encode(text, add_special_tokens=True).ids)
        return list(self._tok.encode(text, add_special_tokens=True))

    @property
    def vocab_size(self) -> int:
        return len(self._tok)
