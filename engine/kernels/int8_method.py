"""The layer method of ``llmaas_int8`` (``engine.kernels.int8_config``): a linear layer's (or the LM head's) float
weight, created and loaded exactly as vLLM's unquantized methods do it, packed to int8 with per-output-channel scales
once loaded, and its forwards of up to ``LLMAAS_INT8_MAX_ROWS`` rows (decode steps) computed by
``engine.kernels.int8.int8_linear``; bigger ones (prefill, big batches) by vLLM's float GEMM on the float weight.
Merged layers (QKV, gate_up) are one weight of stacked shards: per-row scales quantize each shard's rows as they
would be alone. vLLM's LoRA layers call ``base_layer.quant_method.apply``, so adapters add their delta to this output
as they would to a float one.

Imported by the config in vLLM's engine processes only (it loads vLLM's layer code)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from vllm.model_executor.layers.linear import LinearMethodBase, UnquantizedLinearMethod
from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

from engine.kernels import int8
from engine.kernels.int8_config import KernelsUnavailableError
from engine.settings import int8_auto_rows

logger = logging.getLogger("vllm.llmaas_int8")

_checked = False


def require_kernels() -> None:
    """Fails the model's start, with the reason, where the int8 kernels cannot run; logs the path once."""
    global _checked
    if _checked:
        return
    if not int8.available():
        raise KernelsUnavailableError(
            "LLMAAS_QUANTIZATION asks for int8 weights, but the int8 kernels (engine/kernels/int8.py) cannot be "
            "built or loaded on this machine (see the log above); set LLMAAS_QUANTIZATION=none to serve the float "
            "model"
        )
    # vLLM's CPU attention runs AMX tiles where the CPU has them, counting on oneDNN's float GEMMs to have asked the
    # kernel for AMX state first (arch_prctl); with every GEMM on our kernels nobody asks and it dies of SIGILL.
    torch._C._cpu._init_amx()
    logger.info("LLMaaS int8 weights: kernels ready (%s)", int8.isa())
    _checked = True


class Int8LinearMethod(LinearMethodBase):
    """int8 weights for one linear layer or LM head; activations in the model dtype, or int8 per token. Calls of
    more than ``max_rows`` rows (prefill, big batches: compute-bound, where the CPU's float GEMM is faster than
    dequantizing) run vLLM's own float method on the float weight, kept for them; ``max_rows`` 0: int8 always;
    None: by the loaded weight's dtype (``engine.settings.int8_auto_rows``)."""

    def __init__(self, dynamic_activations: bool, max_rows: int | None = 0, lm_head: bool = False) -> None:
        require_kernels()
        self.dynamic_activations = dynamic_activations
        self.max_rows = max_rows
        # The float weight is created (and loaded) by vLLM's own unquantized method for the layer's kind.
        self._float = UnquantizedEmbeddingMethod() if lm_head else UnquantizedLinearMethod()
        self._tied = False
        self._packed = self._scales = torch.empty(0)

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        self._float.create_weights(
            layer,
            input_size_per_partition,
            output_partition_sizes,
            input_size,
            output_size,
            params_dtype,
            **extra_weight_attrs,
        )

    def tie_weights(self, layer: torch.nn.Module, embed_tokens: torch.nn.Module) -> torch.nn.Module:
        """An LM head tied to the embedding: shares its float weight until loaded, then packs its own int8 copy."""
        layer.weight = embed_tokens.weight
        self._tied = True
        return layer

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = layer.get_parameter("weight")
        packed, scales = int8.pack_weight(weight.data)
        layer.register_buffer("int8_weight", packed, persistent=False)
        layer.register_buffer("int8_scales", scales, persistent=False)
        self._packed, self._scales = packed, scales  # one method per layer: no module lookups in the hot path
        if self.max_rows is None:
            dtype = str(weight.dtype).removeprefix("torch.")
            self.max_rows = int8_auto_rows(dtype, int8.bf16_dot_products_lead(self.dynamic_activations))
        if self.max_rows:  # bigger calls: vLLM's float GEMM, prepared as vLLM prepares it
            self._float.process_weights_after_loading(layer)
        elif not self._tied:  # free the float copy (vLLM's CPU path leaves an empty weight too: dtype, device)
            layer.weight = torch.nn.Parameter(torch.empty(0, dtype=weight.dtype), requires_grad=False)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.max_rows and x.numel() > self.max_rows * x.shape[-1]:
            return self._float.apply(layer, x, bias)
        return int8.int8_linear(x, self._packed, self._scales, bias, self.dynamic_activations)


class EmbeddingLookupMethod(UnquantizedEmbeddingMethod):
    """The embedding of an int8 model: float rows for the lookup only. vLLM's CPU method would also prepare a oneDNN
    GEMM of the whole table for a tied LM head, which has its own int8 copy here (that handle is vocab x hidden of
    dead memory)."""

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        pass
