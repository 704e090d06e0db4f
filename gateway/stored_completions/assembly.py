"""A streamed chat completion put back together from its chunks, as the non-streamed answer would have been
(``chat.completion``: each choice's whole message, tool calls joined from their deltas, logprobs, finish reason),
so ``store: true`` keeps one shape whichever way the answer travelled."""

from __future__ import annotations

from typing import Any


class _Choice:
    def __init__(self) -> None:
        self.content: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[dict[str, Any]] | None = None
        self.finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if delta.get("content"):
            self.content.append(delta["content"])
        for call in delta.get("tool_calls") or ():
            known = self.calls.setdefault(call["index"], {"id": None, "type": "function", "name": "", "arguments": ""})
            function = call.get("function") or {}
            known["id"] = call.get("id") or known["id"]
            known["name"] += function.get("name") or ""
            known["arguments"] += function.get("arguments") or ""
        if choice.get("logprobs"):
            self.logprobs = (self.logprobs or []) + list(choice["logprobs"].get("content") or ())
        self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def answer(self, index: int) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not self.calls else None}
        message["refusal"] = None
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for _, call in sorted(self.calls.items())
            ]
        logprobs = None if self.logprobs is None else {"content": self.logprobs, "refusal": None}
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}


class Assembly:
    """Chunks in (``add``), the completion out (``completion``)."""

    def __init__(self) -> None:
        self._header: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        if not self._header:
            self._header = {key: chunk[key] for key in ("id", "created", "model", "system_fingerprint")}
        for choice in chunk["choices"]:
            self._choices.setdefault(choice["index"], _Choice()).add(choice)

    def completion(self, usage: dict[str, Any]) -> dict[str, Any]:
        choices = [self._choices[index].answer(index) for index in sorted(self._choices)]
        return {**self._header, "object": "chat.completion", "choices": choices, "usage": usage}
