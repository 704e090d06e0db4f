"""Training examples to token ids: the conversation rendered with the model's own chat template (or prompt +
completion + eos), labels that train on the assistant's / the completion's tokens only, and right-padded
batches. Pure tokenization, no model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapters.datasets import ChatExample, Dataset, Example, Message, PreferenceExample, PromptCompletionExample

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and labels of one example: the label is the token id where it is trained on, else -100."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def answer_start(self) -> int:
        """Where the first trained token is: the tokens before it are the prompt of the first answer."""
        return next((i for i, label in enumerate(self.labels) if label != IGNORE_INDEX), len(self.labels))

    @property
    def trained_tokens(self) -> int:
        """How many tokens are trained on (their labels are not ``IGNORE_INDEX``)."""
        return sum(label != IGNORE_INDEX for label in self.labels)

    def first_answer(self) -> tuple[int, ...]:
        """The token ids of the first contiguous trained run (the first answer, with its end-of-turn token)."""
        start = self.answer_start
        end = start
        while end < len(self.labels) and self.labels[end] != IGNORE_INDEX:
            end += 1
        return self.labels[start:end]


def collate(batch: Sequence[EncodedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    width = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        attention_mask[row, :length] = 1
        labels[row, :length] = torch.tensor(example.labels)
    return input_ids, attention_mask, labels


def encode_dataset(tokenizer: Any, dataset: Dataset, max_seq_len: int) -> list[EncodedExample]:
    return [encode_example(tokenizer, example, max_seq_len) for example in dataset.examples]


def encode_example(tokenizer: Any, example: Example, max_seq_len: int) -> EncodedExample:
    """Token ids and labels, truncated to ``max_seq_len``.

    Chat: the model's chat template; trained on each assistant message (weight 1) up to and including its
    end-of-turn token. Prompt/completion: prompt + completion + eos, trained on the completion and the eos. A
    preference pair is two examples (``PreferenceExample.pair()``), encoded each on its own.
    """
    if isinstance(example, PreferenceExample):
        raise ValueError("a preference pair is encoded as its two conversations, one at a time")
    if isinstance(example, PromptCompletionExample):
        prompt = list(tokenizer(example.prompt, add_special_tokens=True).input_ids) if example.prompt else []
        completion = [*_tokens(tokenizer, example.completion), tokenizer.eos_token_id]
        input_ids = prompt + completion
        labels = [IGNORE_INDEX] * len(prompt) + completion
    else:
        input_ids, labels = [], []
        for text, trained in _chat_segments(tokenizer, example):
            ids = _tokens(tokenizer, text)
            input_ids += ids
            labels += ids if trained else [IGNORE_INDEX] * len(ids)
    return EncodedExample(input_ids=tuple(input_ids[:max_seq_len]), labels=tuple(labels[:max_seq_len]))


def _chat_segments(tokenizer: Any, example: ChatExample) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, trained) pieces: an assistant message's piece runs from the end
    of the generation prompt before it through its end-of-turn token."""
    messages = example.messages
    full = _render(tokenizer, messages, generation_prompt=False)
    end_of_turn = tokenizer.eos_token or ""
    segments: list[tuple[str, bool]] = []
    done = 0
    for index, message in enumerate(messages):
        if message.role != "assistant" or not message.weight:
            continue
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if not full.startswith(through):
            raise ValueError("the chat template does not render conversations incrementally")
        start = _assistant_start(tokenizer, messages, index, through)
        cut = through.rfind(end_of_turn, start) if end_of_turn else -1
        end = cut + len(end_of_turn) if cut >= 0 else len(through)
        segments += [(full[done:start], False), (full[start:end], True)]
        done = end
    segments.append((full[done:], False))
    return [(text, trained) for text, trained in segments if text]


def _assistant_start(tokenizer: Any, messages: tuple[Message, ...], index: int, through: str) -> int:
    """Where the assistant message ``messages[index]`` starts in ``through`` (the rendering up to it)."""
    if index > 0:
        prefix = _render(tokenizer, messages[:index], generation_prompt=True)
        if through.startswith(prefix):
            return len(prefix)
    # No usable prefix (a conversation opening with the assistant): find the generation prompt's text instead.
    probe = (Message(role="user", content="x"),)
    with_prompt = _render(tokenizer, probe, generation_prompt=True)
    header = with_prompt[len(_render(tokenizer, probe, generation_prompt=False)) :]
    position = through.rfind(header) if header else -1
    if position < 0:
        raise ValueError("cannot locate the assistant message in the chat template's rendering")
    return position + len(header)


def _render(tokenizer: Any, messages: Sequence[Message], *, generation_prompt: bool) -> str:
    conversation = [{"role": message.role, "content": message.content} for message in messages]
    return str(tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt))


def _tokens(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)
