"""The model being trained: a base causal LM with LoRA on its top ``layers`` decoder layers.

Below the lowest LoRA layer nothing is trained, so the hidden state each example reaches there is computed once
(its *frozen prefix*) and every epoch runs only the layers above it, forward and backward; the language-model
head runs only where a token is trained. On the small CPUs this runs on, both together make an epoch several
times cheaper than a full forward and backward pass. An architecture the split does not fit (it is checked on
a probe input against the full model) trains through the full model instead.

A continued job starts from a saved adapter of the same shape (``start_from``): its weights are loaded into the
adapter being trained, and ``reference()`` runs the model the job started from (DPO's reference) — the base model
with the adapter disabled, or, when continuing, a frozen second copy of the saved adapter in the trained one's
place; never a second copy of the base model."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adapters.encoding import IGNORE_INDEX, EncodedExample, collate

logger = logging.getLogger(__name__)
_SPLIT_TOLERANCE = 1e-3
_TRAINED = "default"
"""peft's name of the adapter being trained."""
_REFERENCE = "reference"
"""The frozen copy of the adapter a continued job started from."""


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    layers: int | None = None
    """LoRA on this many of the top decoder layers (None: the top third; more than there are: all)."""


@dataclass(frozen=True)
class BatchLoss:
    summed: torch.Tensor
    """The summed next-token cross-entropy over the trained tokens (differentiable)."""
    tokens: int
    correct: int
    """Trained tokens whose most likely prediction was the target."""


class TrainableModel:
    """``bf16``: compute in bf16 (autocast; the weights and the optimizer stay fp32), for CPUs with native bf16."""

    def __init__(
        self,
        base_model_dir: Path,
        lora: LoraSpec,
        pad_id: int,
        *,
        bf16: bool = False,
        start_from: Path | None = None,
        noise: float = 0.0,
    ):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base: Any = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
        self._bf16 = bf16
        base.config.use_cache = False
        self._decoder: Any = base.get_decoder()
        self._head: Any = base.get_output_embeddings()
        depth = int(base.config.num_hidden_layers)
        self.lora_layers = min(lora.layers or max(1, depth // 3), depth)
        lowest = depth - self.lora_layers
        config = LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            layers_to_transform=list(range(lowest, depth)) if lowest else None,
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model: Any = get_peft_model(base, config)
        self._start_from = start_from
        if start_from is not None:
            self._load(start_from)
        self._layers: Any = self._decoder.layers
        self._pad = pad_id
        self.split_at = lowest
        if lowest and not self._split_matches():
            self.split_at = 0
        self._noise = noise
        if noise:
            self._layers[lowest].register_forward_pre_hook(self._add_noise, with_kwargs=True)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [param for param in self.model.parameters() if param.requires_grad]

    # -- where training starts ---------------------------------------------------------------------------------------
    def _load(self, adapter_dir: Path) -> None:
        """Start from the weights of the adapter saved in ``adapter_dir``; a ValueError if its shape is not this
        one's (every LoRA weight must be there, and nothing else)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
        try:
            loaded: Any = set_peft_model_state_dict(self.model, weights, adapter_name=_TRAINED)
        except RuntimeError as exc:  # a tensor of another size: another rank
            raise ValueError(f"the adapter in {adapter_dir} has another LoRA shape") from exc
        missing = [key for key in loaded.missing_keys if "lora_" in key]
        if missing or loaded.unexpected_keys:
            raise ValueError(f"the adapter in {adapter_dir} has another LoRA shape (layers or target modules)")

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within: the model the job started from, for passes without gradients (DPO's reference model). From
        the base model, that is the base (the adapter disabled); when continuing, a frozen copy of the adapter it
        started from, loaded the first time, stands in for the trained one."""
        if self._start_from is None:
            with self.model.disable_adapter():
                yield
            return
        if _REFERENCE not in self.model.peft_config:
            self.model.load_adapter(str(self._start_from), adapter_name=_REFERENCE, is_trainable=False)
        self.model.base_model.set_adapter(_REFERENCE, inference_mode=True)
        try:
            yield
        finally:  # peft marks the active adapter's weights trainable, and only those
            self.model.base_model.set_adapter(_TRAINED)

    def _add_noise(
        self, _layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """While training (gradients on, train mode): Gaussian noise on the hidden state entering the lowest LoRA
        layer, each token's ``noise`` times its own norm. NEFTune's regulariser (noise on the embeddings, Jain et al.
        2023) moved to where training starts, so the frozen prefixes stay cached; validation and answers see none."""
        if not (self.model.training and torch.is_grad_enabled()):
            return None
        hidden: torch.Tensor = args[0] if args else kwargs["hidden_states"]
        scale = self._noise * hidden.norm(dim=-1, keepdim=True) / hidden.shape[-1] ** 0.5
        noisy = hidden + scale * torch.randn_like(hidden)
        return ((noisy, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": noisy})

    # -- the frozen prefix -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _only(self, layers: Any, *, norm: bool = True) -> Iterator[None]:
        """Run the decoder with only ``layers`` (and without its final norm when ``norm`` is False)."""
        final_norm = self._decoder.norm
        self._decoder.layers = layers
        if not norm:
            self._decoder.norm = torch.nn.Identity()
        try:
            yield
        finally:
            self._decoder.layers = self._layers
            self._decoder.norm = final_norm

    def _split_matches(self) -> bool:
        if not hasattr(self._decoder, "layers") or not hasattr(self._decoder, "norm"):
            return False
        probe = torch.arange(1, 17).unsqueeze(0)
        with torch.no_grad():
            try:
                with self._compute():
                    full = self._decoder(input_ids=probe).last_hidden_state.float()
                ones = torch.ones_like(probe)
                split = self._upper_hidden(self._lower_hidden(probe, ones), ones).float()
            except Exception:  # an architecture whose decoder takes no inputs_embeds the way Llama's does
                logger.info("training through the full model: the decoder cannot be split", exc_info=True)
                return False
        tolerance = _SPLIT_TOLERANCE * (50 if self._bf16 else 1)  # bf16 rounds the hidden state at the split
        matches = bool((full - split).abs().max() < tolerance)
        if not matches:
            logger.info("training through the full model: a split decoder does not match it")
        return matches

    def _compute(self) -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16)

    def _lower_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._only(self._layers[: self.split_at], norm=False), self._compute():
            hidden: torch.Tensor = self._decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden.float()

    def _upper_hidden(self, prefix: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self._only(self._layers[self.split_at :]), self._compute():
            hidden: torch.Tensor = self._decoder(inputs_embeds=prefix, attention_mask=attention_mask).last_hidden_state
        return hidden

    def prefixes(self, examples: Sequence[EncodedExample], batch_size: int = 16) -> list[torch.Tensor] | None:
        """Each example's hidden state below the lowest LoRA layer (None when training the full model)."""
        if not self.split_at:
            return None
        cached: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                input_ids, attention_mask, _ = collate(chunk, self._pad)
                hidden = self._lower_hidden(input_ids, attention_mask)
                cached += [hidden[row, : len(example.input_ids)].clone() for row, example in enumerate(chunk)]
        return cached

    # -- loss and answers --------------------------------------------------------------------------------------------
    def _trained_logits(
        self, batch: Sequence[EncodedExample], prefixes: Sequence[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits at each trained position (fp32), the token trained there, and the (rows, positions) mask of
        those positions."""
        input_ids, attention_mask, labels = collate(batch, self._pad)
        if prefixes is None:
            with self._compute():
                hidden = self._decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            stacked = torch.zeros((len(batch), input_ids.shape[1], prefixes[0].shape[-1]), dtype=prefixes[0].dtype)
            for row, prefix in enumerate(prefixes):
                stacked[row, : prefix.shape[0]] = prefix
            hidden = self._upper_hidden(stacked, attention_mask)
        targets = labels[:, 1:]
        trained = targets != IGNORE_INDEX
        with self._compute():
            logits = self._head(hidden[:, :-1][trained]).float()
        return logits, targets[trained], trained

    def loss(self, batch: Sequence[EncodedExample], prefixes: Sequence[torch.Tensor] | None) -> BatchLoss:
        logits, wanted, trained = self._trained_logits(batch, prefixes)
        summed = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum")
        correct = int((logits.argmax(-1) == wanted).sum())
        return BatchLoss(summed, int(trained.sum()), correct)

    def answer_logprobs(self, batch: Sequence[EncodedExample], prefixes: Sequence[torch.Tensor] | None) -> torch.Tensor:
        """Each example's summed log-probability of its trained tokens, log p(answer | prompt) (differentiable)."""
        logits, wanted, trained = self._trained_logits(batch, prefixes)
        per_token = logits.log_softmax(-1).gather(-1, wanted.unsqueeze(-1)).squeeze(-1)
        rows = trained.nonzero()[:, 0]
        return torch.zeros(len(batch), dtype=per_token.dtype).index_add(0, rows, per_token)

    def answers(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
        """Greedy continuations of ``prompts`` (the full model, with its KV cache), each up to a stop token."""
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, prompt in enumerate(prompts):  # left padding, as generation needs
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        with torch.no_grad(), self._compute():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=self._pad,
                eos_token_id=sorted(stop_ids),
            )
        answers = []
        for row in output[:, width:].tolist():
            cut = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
            answers.append(row[:cut])
        return answers

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def save(self, directory: Path) -> None:
        # Only the trained adapter: a continued DPO job also holds its parent's frozen copy (``reference``).
        self.model.save_pretrained(str(directory), selected_adapters=[_TRAINED])
