"""LoRA supervised fine-tuning on CPU (``peft`` + ``transformers``, a plain PyTorch loop): tokenization with the
loss on the assistant / completion tokens only, seeded shuffled batches, a checkpoint at every epoch end and the
final adapter in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``), which vLLM loads as a
``LoRARequest``."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapters.datasets import ChatExample, Dataset, Example, Message, PromptCompletionExample

IGNORE_INDEX = -100


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainingSpec:
    """One fine-tuning run. ``learning_rate`` is our base rate: OpenAI's ``learning_rate_multiplier`` multiplies it."""

    base_model_dir: Path
    train: Dataset
    validation: Dataset | None
    output_dir: Path
    n_epochs: int = 3
    batch_size: int = 4
    learning_rate: float = 2e-4
    seed: int = 0
    lora: LoraSpec = field(default_factory=LoraSpec)
    max_seq_len: int = 1024


@dataclass(frozen=True)
class StepMetrics:
    """After one optimizer step (1-based); ``valid_loss`` only on an epoch's last step, with a validation set."""

    step: int
    total_steps: int
    epoch: int
    train_loss: float
    valid_loss: float | None
    trained_tokens: int = 0
    """Tokens trained on so far (what the job is charged if it ends now)."""


@dataclass(frozen=True)
class Checkpoint:
    """The adapter saved at an epoch end; ``train_loss`` is the epoch's mean loss per trained token."""

    step: int
    path: Path
    train_loss: float
    valid_loss: float | None


@dataclass(frozen=True)
class TrainingResult:
    """``trained_tokens``: the training sequences' tokens times the epochs; losses are the last epoch's."""

    adapter_dir: Path
    trained_tokens: int
    steps: int
    train_loss: float
    valid_loss: float | None


class TrainingCancelled(Exception):
    """``should_stop()`` asked the run to stop; ``trained_tokens`` were trained until then."""

    def __init__(self, message: str, trained_tokens: int) -> None:
        super().__init__(message)
        self.trained_tokens = trained_tokens


@dataclass(frozen=True)
class EncodedExample:
    """Token ids and labels of one example: the label is the token id where it is trained on, else -100."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def _ignore(_: Any) -> None:
    return None


def _never() -> bool:
    return False


def train_lora(
    spec: TrainingSpec,
    *,
    on_metrics: Callable[[StepMetrics], None] = _ignore,
    on_checkpoint: Callable[[Checkpoint], None] = _ignore,
    should_stop: Callable[[], bool] = _never,
) -> TrainingResult:
    """Trains a LoRA adapter on ``spec.train`` and saves it in ``spec.output_dir/adapter``.

    Raises :class:`TrainingCancelled` as soon as ``should_stop()`` (asked before every step) returns True.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not spec.train.examples:
        raise ValueError("the training set has no examples")
    if spec.n_epochs < 1 or spec.batch_size < 1:
        raise ValueError("n_epochs and batch_size must be at least 1")

    tokenizer = AutoTokenizer.from_pretrained(str(spec.base_model_dir))
    train = encode_dataset(tokenizer, spec.train, spec.max_seq_len)
    valid = encode_dataset(tokenizer, spec.validation, spec.max_seq_len) if spec.validation else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    torch.manual_seed(spec.seed)
    base = AutoModelForCausalLM.from_pretrained(str(spec.base_model_dir), dtype=torch.float32)
    base.config.use_cache = False
    lora = LoraConfig(
        r=spec.lora.rank,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model: Any = get_peft_model(base, lora)
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    shuffler = torch.Generator().manual_seed(spec.seed)

    steps_per_epoch = math.ceil(len(train) / spec.batch_size)
    total_steps = steps_per_epoch * spec.n_epochs
    step = 0
    trained_tokens = 0
    epoch_loss = math.nan
    valid_loss: float | None = None
    for epoch in range(1, spec.n_epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=shuffler).tolist()
        loss_sum, loss_tokens = 0.0, 0
        for start in range(0, len(order), spec.batch_size):
            if should_stop():
                raise TrainingCancelled(f"cancelled before step {step + 1} of {total_steps}", trained_tokens)
            batch = [train[index] for index in order[start : start + spec.batch_size]]
            input_ids, attention_mask, labels = collate(batch, pad_id)
            summed, count = _loss_sum(model, input_ids, attention_mask, labels)
            optimizer.zero_grad(set_to_none=True)
            if count:
                (summed / count).backward()
                optimizer.step()
            step += 1
            trained_tokens += int(attention_mask.sum())
            loss_sum += float(summed.detach())
            loss_tokens += count
            last_of_epoch = start + spec.batch_size >= len(order)
            if last_of_epoch:
                epoch_loss = loss_sum / max(loss_tokens, 1)
                valid_loss = evaluate(model, valid, spec.batch_size, pad_id) if valid else None
            on_metrics(
                StepMetrics(
                    step=step,
                    total_steps=total_steps,
                    epoch=epoch,
                    train_loss=float(summed.detach()) / max(count, 1),
                    valid_loss=valid_loss if last_of_epoch else None,
                    trained_tokens=trained_tokens,
                )
            )
        checkpoint_dir = spec.output_dir / "checkpoints" / f"step-{step}"
        model.save_pretrained(str(checkpoint_dir))
        on_checkpoint(Checkpoint(step=step, path=checkpoint_dir, train_loss=epoch_loss, valid_loss=valid_loss))

    adapter_dir = spec.output_dir / "adapter"
    staging = spec.output_dir / ".adapter-staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.rename(adapter_dir)
    return TrainingResult(
        adapter_dir=adapter_dir,
        trained_tokens=trained_tokens,
        steps=step,
        train_loss=epoch_loss,
        valid_loss=valid_loss,
    )


def evaluate(model: Any, examples: Sequence[EncodedExample], batch_size: int, pad_id: int) -> float:
    """The mean loss per trained token over ``examples`` (no gradients, dropout off)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            input_ids, attention_mask, labels = collate(examples[start : start + batch_size], pad_id)
            summed, n = _loss_sum(model, input_ids, attention_mask, labels)
            total += float(summed)
            count += n
    model.train()
    return total / max(count, 1)


def _loss_sum(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """The summed next-token cross-entropy over the trained tokens, and their number."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    targets = labels[:, 1:]
    summed = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return summed, int((targets != IGNORE_INDEX).sum())


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
    end-of-turn token. Prompt/completion: prompt + completion + eos, trained on the completion and the eos.
    """
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
