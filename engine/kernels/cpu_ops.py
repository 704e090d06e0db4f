"""Fused C++ CPU kernels for RMSNorm and SiluAndMul in eager mode, instead of their PyTorch-native forms.

On x86 vLLM's CPU backend runs both layers as chains of PyTorch ops (RMSNorm: cast, square, mean, add, rsqrt, two
multiplies; SiluAndMul: slice, silu, multiply), expecting ``torch.compile`` to fuse them. We run eager (fast start,
``EngineSettings.enforce_eager``), where each op of the chain is a dispatch, an allocation and an OpenMP fork/join:
at one stream, on two cores, they were about a tenth of a decode step of SmolLM2-135M. vLLM's CPU extension has
fused kernels (``torch.ops._C.rms_norm``, ``fused_add_rms_norm``, ``silu_and_mul``, what its GPU path calls), so
these subclasses call them, through vLLM's seam for out-of-tree layers (``CustomOp.register_oot``: vLLM builds our
class wherever a model asks for ``RMSNorm`` / ``SiluAndMul``) — except vLLM's ``silu_and_mul``, slower than the
chain past a few rows: SiluAndMul takes our own kernel (``engine.kernels.activation``), vLLM's only where ours
cannot be built. Anything the kernels do not take (another dtype, a
weight of another dtype, a strided input, a variance over part of the hidden size, batch-invariant mode) runs vLLM's
own ``forward_cpu``, as does every layer built while ``LLMAAS_CPU_FUSED_OPS=false`` (``EngineSettings.cpu_fused_ops``;
read when the layer is built, so that an engine process forked from one with another setting still follows its
own); under ``torch.compile`` vLLM calls ``forward_native`` and none of this is used.

fp32 results equal the native ones to rounding (the norms sum in another order, our exponential is within 2 ulp);
bf16 ones round once instead of twice. Installed by ``engine.kernels.vllm_plugin`` in vLLM's processes on the CPU
platform."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from vllm import envs
from vllm.model_executor.custom_op import CustomOp, op_registry_oot
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm

from engine.kernels import activation
from engine.kernels.vllm_plugin import CPU_FUSED_OPS_ENV

logger = logging.getLogger("vllm.llmaas_cpu_ops")

_DTYPES = (torch.float32, torch.bfloat16)


def enabled() -> bool:
    """Whether layers built now use the fused kernels (``LLMAAS_CPU_FUSED_OPS``: on unless 0 / false / no / off,
    as the setting of the same name reads it)."""
    return os.environ.get(CPU_FUSED_OPS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class FusedRMSNorm(RMSNorm):
    """``RMSNorm`` by ``_C.rms_norm`` / ``_C.fused_add_rms_norm`` (residual added and normalised in place, as vLLM's
    GPU path does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What holds for the layer's life is decided once; the inputs are checked per call.
        self.fused = enabled() and self.variance_size_override is None and not envs.VLLM_BATCH_INVARIANT

    def forward_cpu(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self._fused(x, residual):
            native: torch.Tensor | tuple[torch.Tensor, torch.Tensor] = super().forward_cpu(x, residual)  # type: ignore[no-untyped-call]
            return native
        if residual is None:
            out = torch.empty_like(x)
            torch.ops._C.rms_norm(out, x, self.weight.data, self.variance_epsilon)
            return out
        torch.ops._C.fused_add_rms_norm(x, residual, self.weight.data, self.variance_epsilon)
        return x, residual

    def _fused(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        return (
            self.fused
            and x.dtype in _DTYPES
            and self.weight.dtype == x.dtype
            and x.is_contiguous()
            and (residual is None or (residual.dtype == x.dtype and residual.is_contiguous()))
        )


class FusedSiluAndMul(SiluAndMul):
    """``SiluAndMul`` by our kernel (``activation.silu_and_mul``), or ``_C.silu_and_mul`` where ours cannot be
    built."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fused = enabled()
        self.ours = self.fused and activation.available()

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused or x.dtype not in _DTYPES or not x.is_contiguous() or x.shape[-1] % 2:
            return super().forward_cpu(x)
        if self.ours:
            return activation.silu_and_mul(x)
        out = torch.empty((*x.shape[:-1], x.shape[-1] // 2), dtype=x.dtype)
        torch.ops._C.silu_and_mul(out, x)
        return out


_LAYERS: tuple[tuple[type[CustomOp], type[CustomOp]], ...] = (
    (RMSNorm, FusedRMSNorm),
    (SiluAndMul, FusedSiluAndMul),
)


def install() -> list[str]:
    """Registers the fused layers with vLLM (idempotent); the names of those it registered now. Leaves alone a
    layer another plugin already replaced, and does nothing where vLLM's CPU extension lacks the kernels."""
    from vllm.platforms import current_platform

    current_platform.import_kernels()  # loads vLLM's CPU extension, which registers torch.ops._C
    if not all(hasattr(torch.ops._C, op) for op in ("rms_norm", "fused_add_rms_norm", "silu_and_mul")):
        logger.info("LLMaaS CPU ops: vLLM's CPU extension has no fused RMSNorm/SiluAndMul here; native ops serve")
        return []
    installed = []
    for vllm_layer, ours in _LAYERS:
        key = vllm_layer.__name__
        if key in op_registry_oot:
            continue
        # register_oot renames our class after its key; vLLM's custom_ops switches use the registered name
        name = vllm_layer.name  # type: ignore[attr-defined]  # set by CustomOp.register
        vllm_layer.register_oot(ours)
        ours.name = name  # type: ignore[attr-defined]
        installed.append(key)
    if installed:
        silu = f"ours ({activation.isa()})" if activation.available() else "vLLM's"
        logger.info("LLMaaS CPU ops: %s by fused C++ kernels (eager; SiluAndMul: %s)", ", ".join(installed), silu)
    return installed
