"""The vLLM general plugin that puts our LoRA kernels on vLLM's CPU LoRA path and registers our int8 weights.

Declared in ``pyproject.toml`` under the entry-point group ``vllm.general_plugins`` (``llmaas_lora_cpu``), so vLLM
calls :func:`register` in every process it starts (front end, engine core, workers). ``register`` patches the
CPU platform's ``get_punica_wrapper`` to name ``engine.kernels.punica_wrapper.LLMaaSPunicaWrapperCPU`` instead of
vLLM's ``PunicaWrapperCPU``; the kernels are built/loaded lazily when a LoRA-enabled model asks for its wrapper.

Off switch: ``LLMAAS_LORA_KERNELS=vllm`` (``EngineSettings.lora_kernels``; ``engine.vllm_engine`` exports it before
the engine starts so that vLLM's spawned processes inherit it). It does nothing on GPU hosts or non-CPU platforms,
and never raises: if the kernels cannot be built or loaded, the process logs it once and vLLM's own ops serve.

It also registers the quantization method ``llmaas_int8`` (``engine.kernels.int8_config``) in every process, so
that ``quantization="llmaas_int8"`` (``EngineSettings.quantization``) and ``vllm serve --quantization llmaas_int8``
name it, and (``engine.kernels.cpu_ops``) puts vLLM's fused C++ RMSNorm and SiluAndMul kernels in place of their
PyTorch-native forms on the CPU platform; off switch ``LLMAAS_CPU_FUSED_OPS=false`` (``EngineSettings.cpu_fused_ops``,
read where each layer is built)."""

from __future__ import annotations

import logging
import os

MODE_ENV = "LLMAAS_LORA_KERNELS"
MODES = ("llmaas", "vllm")
CPU_WRAPPER = "vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU"
OUR_WRAPPER = "engine.kernels.punica_wrapper.LLMaaSPunicaWrapperCPU"
QUANTIZATION_METHOD = "llmaas_int8"
QUANTIZATION_ENV = "LLMAAS_QUANTIZATION"
"""int8 or w8a8 (``EngineSettings.quantization``): which of the two ``llmaas_int8`` runs in the engine processes."""
CPU_FUSED_OPS_ENV = "LLMAAS_CPU_FUSED_OPS"
"""``EngineSettings.cpu_fused_ops``: false (or 0) keeps vLLM's PyTorch-native RMSNorm and SiluAndMul on the CPU."""
INT8_MAX_ROWS_ENV = "LLMAAS_INT8_MAX_ROWS"
"""``EngineSettings.int8_max_rows``: the largest layer call that reads the int8 weights (0: every call)."""

# Under vLLM's logger tree: engine processes print these through vLLM's handler, in its format.
logger = logging.getLogger("vllm.llmaas_lora_kernels")

_ready: bool | None = None


def mode() -> str:
    """``llmaas`` (our kernels, the default) or ``vllm`` (vLLM's own CPU LoRA ops)."""
    value = os.environ.get(MODE_ENV, "llmaas").strip().lower() or "llmaas"
    if value not in MODES:
        logger.warning("%s=%r is not one of %s; using vLLM's own LoRA ops", MODE_ENV, value, MODES)
        return "vllm"
    return value


def register() -> None:
    """vLLM's plugin hook; safe to call many times, in any process."""
    try:
        _register()
    except Exception:
        logger.warning("LLMaaS LoRA kernels: plugin setup failed; vLLM's own LoRA ops serve", exc_info=True)
    try:
        from engine.kernels import int8_config

        int8_config.register()
    except Exception:  # a model asking for llmaas_int8 then fails to start: vLLM names the unknown method
        logger.warning("LLMaaS int8 weights: registering quantization method llmaas_int8 failed", exc_info=True)
    try:
        _register_cpu_ops()
    except Exception:
        logger.warning("LLMaaS CPU ops: setup failed; vLLM's native RMSNorm and SiluAndMul serve", exc_info=True)


def _register() -> None:
    if mode() != "llmaas" or not _cpu_host():  # a GPU host: vLLM's Triton/CUDA LoRA kernels stay in charge
        return
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    if getattr(platform_cls, "_llmaas_lora_kernels", False):
        return
    if platform_cls.get_punica_wrapper() != CPU_WRAPPER:
        logger.info("LLMaaS LoRA kernels: this platform uses its own punica wrapper; leaving it alone")
        return

    def get_punica_wrapper(cls: type) -> str:
        return OUR_WRAPPER if kernels_ready() else CPU_WRAPPER

    platform_cls.get_punica_wrapper = classmethod(get_punica_wrapper)  # type: ignore[assignment]  # patches vLLM
    platform_cls._llmaas_lora_kernels = True  # type: ignore[attr-defined]


def _register_cpu_ops() -> None:
    if _cpu_host():
        from engine.kernels import cpu_ops

        cpu_ops.install()


def _cpu_host() -> bool:
    """No GPU, and vLLM runs its CPU platform."""
    import torch

    if torch.cuda.is_available():
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def kernels_ready() -> bool:
    """Builds/loads the kernels once per process; logs the outcome once."""
    global _ready

    if _ready is None:
        from engine import kernels

        _ready = kernels.available()
        if _ready:
            logger.info("LLMaaS LoRA kernels enabled (%s build in %s)", kernels.isa(), kernels.cache_dir())
        else:
            logger.warning(
                "LLMaaS LoRA kernels unavailable, vLLM's own CPU LoRA ops serve adapters instead: %s",
                kernels.load_error(),
            )
    return _ready
