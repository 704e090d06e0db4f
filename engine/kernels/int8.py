"""STAND-IN for helper int8kern's int8 kernels (the agreed API in pure torch); replaced by their module on merge."""

from __future__ import annotations

import torch


def pack_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    packed = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return packed.contiguous(), scales.contiguous()


def unpack_weight(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return packed.float() * scales[:, None]


def int8_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    dynamic_activations: bool = False,
) -> torch.Tensor:
    xf = x.float()
    if dynamic_activations:
        x_scales = (xf.abs().amax(dim=-1, keepdim=True) / 127).clamp(min=1e-12)
        xf = torch.round(xf / x_scales).clamp(-127, 127) * x_scales
    out = (xf @ packed.float().T) * scales
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def available() -> bool:
    return True


def isa() -> str:
    return "portable"
