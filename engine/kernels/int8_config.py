"""The vLLM quantization method ``llmaas_int8``: int8 weights (symmetric, per output channel) for every linear layer
and the LM head of an unquantized checkpoint, quantized as the model loads and computed by our C++ kernels
(``engine.kernels.int8``). The layer methods live in ``engine.kernels.int8_method``; this module is what our vLLM
plugin (``engine.kernels.vllm_plugin``) registers in every vLLM process; it imports vLLM's layer code only when a
model asks it for a method, so registering it costs a process little.

The mode comes from ``LLMAAS_QUANTIZATION`` (``EngineSettings.quantization``, exported by ``engine.vllm_setup`` before
vLLM spawns its engine processes; set it beside ``--quantization llmaas_int8`` for ``vllm serve``): ``w8a8`` also
quantizes each token's activations to int8 on the fly (int32 dot products); anything else is weight-only (``int8``,
activations in the model dtype). The checkpoint stays as it is: the float weights are created and loaded as usual,
then packed to int8 in ``process_weights_after_loading`` and the float copy freed (except the embedding's, which an
LM head tied to it shares: the lookup keeps its float rows, the head gets an int8 copy).

If the kernels cannot be built on this machine the engine fails to start with that reason: it never serves the
float model while saying int8."""

from __future__ import annotations

import os
from typing import Any

import torch
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase

from engine.kernels.vllm_plugin import INT8_MAX_ROWS_ENV, QUANTIZATION_ENV, QUANTIZATION_METHOD

DYNAMIC_MODE = "w8a8"


class KernelsUnavailableError(RuntimeError):
    """int8 was asked for, and the int8 kernels cannot run here."""


def dynamic_activations() -> bool:
    """Whether ``LLMAAS_QUANTIZATION`` asks for int8 activations too (``w8a8``)."""
    return os.environ.get(QUANTIZATION_ENV, "").strip().lower() == DYNAMIC_MODE


def max_rows() -> int | None:
    """``LLMAAS_INT8_MAX_ROWS``: the largest layer call on the int8 weights (0: every call; unset or unreadable, as
    for a bare ``vllm serve``: None, each layer then goes by its weights' dtype, ``int8_auto_rows``)."""
    try:
        return max(int(os.environ[INT8_MAX_ROWS_ENV]), 0)
    except (KeyError, ValueError):
        return None


class LLMaaSInt8Config(QuantizationConfig):
    """int8 weights with per-output-channel scales, quantized at load time; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # vLLM leaves it unannotated
        self.dynamic_activations = dynamic_activations()
        self.max_rows = max_rows()

    def __repr__(self) -> str:
        return f"LLMaaSInt8Config(dynamic_activations={self.dynamic_activations}, max_rows={self.max_rows})"

    def get_name(self) -> str:  # type: ignore[override]  # a registered name, outside vLLM's Literal of its own
        return QUANTIZATION_METHOD

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.float32, torch.bfloat16]

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # CPU kernels: no GPU capability applies

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # an unquantized checkpoint: nothing to read

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LLMaaSInt8Config:
        return cls()

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.linear import LinearBase
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        from engine.kernels.int8_method import EmbeddingLookupMethod, Int8LinearMethod

        if isinstance(layer, ParallelLMHead):
            return Int8LinearMethod(self.dynamic_activations, self.max_rows, lm_head=True)
        if isinstance(layer, LinearBase):
            return Int8LinearMethod(self.dynamic_activations, self.max_rows)
        if isinstance(layer, VocabParallelEmbedding):
            return EmbeddingLookupMethod()  # the lookup reads rows: float, as in the checkpoint
        return None


def register() -> None:
    """Makes ``llmaas_int8`` a quantization method of this process's vLLM (idempotent)."""
    register_quantization_config(QUANTIZATION_METHOD)(LLMaaSInt8Config)
