"""Which base models fine-tuning jobs may name, decided by one setting: ``LLMAAS_SERVED_MODEL_NAME`` (the engine
settings' ``served_model_name``), whose weights the worker trains from (``LLMAAS_MODEL_PATH``, or the prepared
default model). Job creation refuses any other model with a 400 naming ``model``; the worker (``llmaas worker``)
is handed the same models' directories, so a job it cannot train is never accepted. (An upstream pool may serve
more models than this: those are served, not trainable here.)"""

from __future__ import annotations

from engine.settings import EngineSettings


def trainable_models(settings: EngineSettings) -> tuple[str, ...]:
    """The base models a job may name."""
    return (settings.served_model_name,)
