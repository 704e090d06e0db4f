"""vLLM's CPU punica wrapper (``PunicaWrapperCPU``) with its LoRA arithmetic done by our kernels.

vLLM's CPU wrapper runs its PyTorch fallback ops one slice at a time, gathering a copy of the adapter weights for
every token (and, for the logits, on every step, adapter or not). This subclass keeps vLLM's metadata handling
and replaces the entry points the LoRA layers call
(``add_lora_linear``, ``add_shrink``, ``add_expand``, ``add_lora_embedding``, ``add_lora_logits``,
``apply_lora_full_linear``) with ``engine.kernels`` ops: one call per layer for all its slices, tokens grouped
by adapter, and nothing at all (not even a buffer) when no token of the batch uses an adapter. Tokens without an
adapter (index -1) are left untouched, as vLLM's GPU kernels do; vLLM's CPU fallback instead indexes its weight
stack with -1 and applies the *last* slot's adapter to them when that slot is in use.

Anything the kernels do not cover (a dtype other than fp32/bf16, unexpected shapes) goes to vLLM's own
implementation. Building the wrapper also installs the short paths through vLLM's LoRA layers
(``engine.kernels.lora_layers``), which read ``adapters_in_batch``. Imported by vLLM (through
``engine.kernels.vllm_plugin``) inside engine processes only."""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from engine import kernels
from engine.kernels import lora_layers

# Under vLLM's logger tree: engine processes print these through vLLM's handler, in its format.
logger = logging.getLogger("vllm.llmaas_lora_kernels")

FIRST_USE_MESSAGE = "LLMaaS LoRA kernels (%s) are serving adapter tokens"
_SUPPORTED = (torch.float32, torch.bfloat16)
_announced = False
_fallbacks_logged: set[str] = set()


def _announce() -> None:
    global _announced
    if not _announced:
        _announced = True
        logger.info(FIRST_USE_MESSAGE, kernels.isa())


def _supported(*tensors: torch.Tensor) -> bool:
    return all(t.dtype in _SUPPORTED for t in tensors)


def _fallback(what: str, reason: str) -> None:
    key = f"{what}:{reason}"
    if key not in _fallbacks_logged:
        _fallbacks_logged.add(key)
        logger.info("LLMaaS LoRA kernels: %s falls back to vLLM's op (%s)", what, reason)


class LLMaaSPunicaWrapperCPU(PunicaWrapperCPU):
    """``PunicaWrapperCPU`` whose shrink/expand run as our grouped (SGMV) C++ kernels."""

    def __init__(self, max_num_batched_tokens: int, max_batches: int, device: torch.device | str, **kwargs: Any):
        super().__init__(max_num_batched_tokens, max_batches, device, **kwargs)
        kernels.load()
        # The index views of the current batch, or None when no token / sampled row uses an adapter.
        self._tokens: torch.Tensor | None = None
        self._sampler: torch.Tensor | None = None
        # Read by the LoRA layers' short paths (engine.kernels.lora_layers): False -> run the base layers alone.
        self.adapters_in_batch = False
        lora_layers.install()

    def update_metadata(
        self, mapping: Any, lora_index_to_id: list[int | None], max_loras: int, vocab_size: int, **kwargs: Any
    ) -> None:
        super().update_metadata(mapping, lora_index_to_id, max_loras, vocab_size, **kwargs)
        # Once per step (and only when the mapping changed): does any token / sampled row use an adapter?
        tokens, sampler = self.token_lora_indices, self.sampler_indices
        self._tokens = tokens if tokens.numel() and bool(tokens.max() >= 0) else None
        self._sampler = sampler if sampler.numel() and bool(sampler.max() >= 0) else None
        self.adapters_in_batch = self._tokens is not None

    # -- linear layers ------------------------------------------------------------------------------------------

    def add_lora_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        lora_b_stacked: tuple[torch.Tensor, ...],
        scale: float,
        output_slices: tuple[int, ...],
        *,
        buffer: tuple[torch.Tensor, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        indices = self._tokens
        if indices is None:
            return
        if buffer is not None:
            self.add_shrink(buffer, x, lora_a_stacked, scale, **kwargs)
            self.add_expand(y, buffer, lora_b_stacked, output_slices, add_inputs=True, **kwargs)
            return
        x2 = x if x.dim() == 2 else x.view(-1, x.shape[-1])
        y2 = y if y.dim() == 2 else y.view(-1, y.shape[-1])
        if not _supported(x2, y2, lora_a_stacked[0], lora_b_stacked[0]) or indices.size(0) != x2.size(0):
            _fallback("add_lora_linear", f"{x2.dtype}, {x2.size(0)} rows, {indices.size(0)} indices")
            super().add_lora_linear(y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, **kwargs)
            return
        _announce()
        kernels.lora_linear(y2, x2, lora_a_stacked, lora_b_stacked, indices, scale, output_slices)

    def add_shrink(
        self,
        y: tuple[torch.Tensor, ...] | torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: tuple[torch.Tensor, ...],
        scale: float,
        **kwargs: Any,
    ) -> None:
        indices = self._tokens
        if indices is None:
            return
        x2 = x if x.dim() == 2 else x.view(-1, x.shape[-1])
        outputs = [y[i].view(-1, y[i].shape[-1]) for i in range(len(lora_a_stacked))]
        if not _supported(x2, outputs[0], lora_a_stacked[0]) or indices.size(0) != x2.size(0):
            _fallback("add_shrink", f"{x2.dtype}, {x2.size(0)} rows, {indices.size(0)} indices")
            super().add_shrink(y, x, lora_a_stacked, scale, **kwargs)
            return
        _announce()
        kernels.lora_shrink(x2, lora_a_stacked, outputs, indices, scale)

    def add_expand(
        self,
        y: torch.Tensor,
        x: tuple[torch.Tensor, ...] | torch.Tensor,
        lora_b_stacked: tuple[torch.Tensor, ...],
        output_slices: tuple[int, ...],
        offset_start: int = 0,
        add_inputs: bool = True,
        **kwargs: Any,
    ) -> None:
        indices = self._tokens
        if indices is None:
            return
        y2 = y if y.dim() == 2 else y.view(-1, y.shape[-1])
        inputs = [x[i] for i in range(len(lora_b_stacked))]
        if not _supported(y2, inputs[0], lora_b_stacked[0]) or indices.size(0) != y2.size(0):
            _fallback("add_expand", f"{y2.dtype}, {y2.size(0)} rows, {indices.size(0)} indices")
            super().add_expand(y, x, lora_b_stacked, output_slices, offset_start, add_inputs, **kwargs)
            return
        _announce()
        kernels.lora_expand(inputs, lora_b_stacked, y2, indices, offset_start, output_slices, add_inputs)

    # -- embeddings, logits, classifier heads ---------------------------------------------------------------------

    def add_lora_embedding(
        self, y: torch.Tensor, x: torch.Tensor, lora_b_stacked: torch.Tensor, add_inputs: bool = True, **kwargs: Any
    ) -> None:
        indices = self._tokens
        if indices is None:
            return
        if not _supported(y, x, lora_b_stacked) or y.dim() != 2 or not x.size(0) == y.size(0) == indices.size(0):
            _fallback("add_lora_embedding", f"{y.dtype}, {x.size(0)} rows, {indices.size(0)} indices")
            super().add_lora_embedding(y, x, lora_b_stacked, add_inputs, **kwargs)
            return
        _announce()
        width = min(lora_b_stacked.size(-2), y.size(-1))
        kernels.lora_expand([x], [lora_b_stacked], y, indices, 0, [width], add_inputs)

    def add_lora_logits(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        lora_a_stacked: torch.Tensor,
        lora_b_stacked: torch.Tensor,
        scale: float,
        *,
        buffer: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        indices = self._sampler
        if indices is None:
            return
        y2 = y.view(-1, y.shape[-1])
        x2 = x.view(-1, x.shape[-1])
        if not _supported(y2, x2, lora_a_stacked, lora_b_stacked) or not x2.size(0) == y2.size(0) == indices.size(0):
            _fallback("add_lora_logits", f"{y2.dtype}, {x2.size(0)} rows, {indices.size(0)} indices")
            super().add_lora_logits(y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)
            return
        _announce()
        width = min(lora_b_stacked.size(-2), y2.size(-1))
        if buffer is None:
            kernels.lora_linear(y2, x2, [lora_a_stacked], [lora_b_stacked], indices, scale, [width])
        else:
            kernels.lora_shrink(x2, [lora_a_stacked], [buffer], indices, scale)
            kernels.lora_expand([buffer], [lora_b_stacked], y2, indices, 0, [width], True)

    def apply_lora_full_linear(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        weight_stacked: torch.Tensor,
        bias_stacked: torch.Tensor,
        module_enabled: torch.Tensor,
    ) -> None:
        indices = self._sampler
        if indices is None:
            return  # every row keeps the base layer's output
        if not _supported(x, weight_stacked) or x.size(0) != indices.size(0):
            _fallback("apply_lora_full_linear", f"{x.dtype}, {x.size(0)} rows, {indices.size(0)} indices")
            super().apply_lora_full_linear(y, x, weight_stacked, bias_stacked, module_enabled)
            return
        _announce()
        adapter_y = torch.zeros((x.size(0), weight_stacked.size(-2)), dtype=torch.float32, device=x.device)
        kernels.lora_shrink(x, [weight_stacked], [adapter_y], indices, 1.0)
        y.copy_(self._select_full_linear_output(y, adapter_y, bias_stacked, module_enabled))
