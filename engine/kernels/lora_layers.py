"""Short paths through vLLM's LoRA layers on the CPU, taken when our punica wrapper drives them.

vLLM wraps each layer an adapter may target (``ColumnParallelLinearWithLoRA`` and its merged/QKV subclasses,
``RowParallelLinearWithLoRA``, ``ReplicatedLinearWithLoRA``, ``VocabParallelEmbeddingWithLoRA``). A forward through
such a wrapper walks half a dozen Python calls and a dozen attribute lookups delegated to the base layer before the
base matmul, then asks the punica wrapper for the delta; over the ~200 wrapped layers of a decode step that
bookkeeping costs several percent of a small model's step on two cores. The patched ``forward``:

* when our wrapper (``engine.kernels.punica_wrapper``) reports that no token of the batch uses an adapter, runs
  the base layer's own ``forward`` and nothing else: what a LoRA-disabled engine runs, the same output by
  construction;
* otherwise, for a linear layer without tensor parallelism whose ``apply`` is vLLM's plain "base, then delta" one
  (not the fully-sharded variants), runs the base layer's ``forward`` and adds the delta in place through the
  punica wrapper's ``add_lora_linear``, which is what vLLM's own path computes (it takes this very route itself
  for unsharded layers with a custom base ``forward``), minus the detour;
* in every other case (tensor parallelism, sharded LoRA, the embedding with adapters, any other punica wrapper,
  tracing under ``torch.compile``) runs vLLM's forward unchanged.

Installed by ``LLMaaSPunicaWrapperCPU`` when vLLM builds it (so only in engine processes, only with our kernels
on); ``install`` is idempotent and leaves alone any class that no longer defines ``forward`` itself."""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("vllm.llmaas_lora_kernels")

# (module, class) of the vLLM LoRA layers whose forward is "base layer, then the punica wrapper's delta".
LAYERS = (
    ("vllm.lora.layers.column_parallel_linear", "ColumnParallelLinearWithLoRA"),
    ("vllm.lora.layers.row_parallel_linear", "RowParallelLinearWithLoRA"),
    ("vllm.lora.layers.replicated_linear", "ReplicatedLinearWithLoRA"),
    ("vllm.lora.layers.vocab_parallel_embedding", "VocabParallelEmbeddingWithLoRA"),
)
# The ``apply`` methods that compute "base layer, then the punica wrapper's delta" (with no tensor parallelism).
PLAIN_APPLY = (
    ("vllm.lora.layers.base_linear", "BaseLinearLayerWithLoRA"),
    ("vllm.lora.layers.column_parallel_linear", "MergedColumnParallelLinearWithLoRA"),
    ("vllm.lora.layers.replicated_linear", "ReplicatedLinearWithLoRA"),
)
MARKER = "__llmaas_short_path__"


def short_forward(lora_forward: Callable[..., Any], plain_apply: frozenset[Any]) -> Callable[..., Any]:
    """``lora_forward`` with the short paths above; ``plain_apply``: the ``apply`` methods that mean "base, then
    delta" (empty for the embedding, which has only the idle path)."""
    from engine.kernels.punica_wrapper import LLMaaSPunicaWrapperCPU

    @functools.wraps(lora_forward)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        punica = self.__dict__.get("punica_wrapper")
        # Under torch.compile a traced branch would outlive the batch it was traced for (vLLM drops the guards).
        if not isinstance(punica, LLMaaSPunicaWrapperCPU) or torch.compiler.is_compiling():
            return lora_forward(self, *args, **kwargs)
        if not punica.adapters_in_batch:
            return self._modules["base_layer"].forward(*args, **kwargs)
        if self.__dict__.get("tp_size") != 1 or type(self).apply not in plain_apply or len(args) != 1 or kwargs:
            return lora_forward(self, *args, **kwargs)
        (x,) = args
        out = self._modules["base_layer"].forward(x)
        y = out[0] if isinstance(out, tuple) else out
        punica.add_lora_linear(y, x, self.lora_a_stacked, self.lora_b_stacked, 1.0, self.output_slices)
        return out

    setattr(forward, MARKER, True)
    return forward


def _find(module_name: str, class_name: str) -> Any:
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        logger.info("LLMaaS LoRA kernels: %s.%s not found; its layers keep vLLM's path", module_name, class_name)
        return None


def install() -> list[str]:
    """Patches the classes in ``LAYERS`` (once); returns the names of those patched now."""
    plain_apply = frozenset(cls.apply for cls in (_find(*where) for where in PLAIN_APPLY) if cls is not None)
    patched = []
    for module_name, class_name in LAYERS:
        cls = _find(module_name, class_name)
        forward = None if cls is None else cls.__dict__.get("forward")
        if forward is None or getattr(forward, MARKER, False):
            continue
        embedding = class_name == "VocabParallelEmbeddingWithLoRA"  # adapters in the batch: vLLM's path
        cls.forward = short_forward(forward, frozenset() if embedding else plain_apply)
        patched.append(class_name)
    if patched:
        logger.info("LLMaaS LoRA kernels: short LoRA-layer paths on for %s", ", ".join(patched))
    return patched
