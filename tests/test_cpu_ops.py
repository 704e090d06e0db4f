"""Fused C++ RMSNorm (vLLM's) / SiluAndMul (ours) on the CPU (``engine/kernels/cpu_ops.py``): the vLLM plugin makes
them the layers vLLM builds, they give vLLM's native results (fp32 to rounding, bf16 within one rounding), the
residual is added and normalised as vLLM's native path does, and what the kernels do not take (strided input, a
variance over part of the hidden size, ``LLMAAS_CPU_FUSED_OPS=false``) runs vLLM's own code."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm

from engine.kernels import activation, cpu_ops, vllm_plugin

SHAPES = [(1, 576), (37, 576), (3, 5, 64), (2, 4096)]
# Largest difference from vLLM's native forward, relative to the largest output: fp32 sums in another order, bf16
# rounds once where the native chain rounds twice.
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def vllm_config() -> Iterator[None]:
    vllm_plugin.register()
    with set_current_vllm_config(VllmConfig()):
        yield


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    scale = want.double().abs().max().clamp_min(1e-30)
    return bool((got.double() - want.double()).abs().max() / scale <= TOLERANCE[want.dtype])


def norm(hidden: int, dtype: torch.dtype, generator: torch.Generator, **kwargs: int) -> RMSNorm:
    layer = RMSNorm(hidden, eps=1e-5, dtype=dtype, **kwargs)
    layer.weight.data = torch.randn(hidden, generator=generator).to(dtype)
    return layer


def test_the_plugin_makes_them_the_layers_vllm_builds() -> None:
    assert cpu_ops.install() == []  # the plugin did it; a second install registers nothing
    assert type(RMSNorm(64)) is cpu_ops.FusedRMSNorm
    assert type(SiluAndMul()) is cpu_ops.FusedSiluAndMul
    assert cpu_ops.FusedRMSNorm.name == "rms_norm" and cpu_ops.FusedSiluAndMul.name == "silu_and_mul"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_layers_match_vllms_native_ones(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    hidden = shape[-1]
    layer = norm(hidden, dtype, generator)
    x = (torch.randn(shape, generator=generator) * 3).to(dtype)
    residual = torch.randn(shape, generator=generator).to(dtype)

    assert close(layer.forward_cpu(x), layer.forward_native(x))
    want, want_residual = layer.forward_native(x.clone(), residual.clone())
    x_in, residual_in = x.clone(), residual.clone()
    got, got_residual = layer.forward_cpu(x_in, residual_in)
    assert close(got, want) and torch.equal(got_residual, want_residual)
    assert got.data_ptr() == x_in.data_ptr() and got_residual.data_ptr() == residual_in.data_ptr()  # in place

    act = SiluAndMul()
    gate_up = torch.randn((*shape[:-1], 2 * hidden), generator=generator).to(dtype)
    assert close(act.forward_cpu(gate_up), SiluAndMul.forward_native(gate_up))


def test_what_the_kernels_do_not_take_runs_vllms_own_code(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(3)
    calls: list[str] = []
    monkeypatch.setattr(torch.ops._C, "rms_norm", lambda *args: calls.append("rms_norm"))
    monkeypatch.setattr(torch.ops._C, "silu_and_mul", lambda *args: calls.append("silu_and_mul"))
    monkeypatch.setattr(activation, "silu_and_mul", lambda *args, **kwargs: calls.append("ours"))

    strided = torch.randn(8, 128, generator=generator)[:, ::2]
    layer = norm(64, torch.float32, generator)
    assert torch.equal(layer.forward_cpu(strided), layer.forward_native(strided))
    partial = norm(64, torch.float32, generator, var_hidden_size=32)
    x = torch.randn(4, 64, generator=generator)
    assert torch.equal(partial.forward_cpu(x), partial.forward_native(x))
    gate_up = torch.randn(6, 128, generator=generator)[:, :96]
    assert torch.equal(SiluAndMul().forward_cpu(gate_up), SiluAndMul.forward_native(gate_up))

    monkeypatch.setenv(vllm_plugin.CPU_FUSED_OPS_ENV, "false")  # as an operator writes the setting
    switched_off, act = norm(64, torch.float32, generator), SiluAndMul()
    assert not switched_off.fused and not act.fused
    assert torch.equal(switched_off.forward_cpu(x), switched_off.forward_native(x))
    both = torch.randn(4, 128, generator=generator)
    assert torch.equal(act.forward_cpu(both), SiluAndMul.forward_native(both))
    assert calls == []
