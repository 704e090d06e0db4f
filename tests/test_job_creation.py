"""Creating a fine-tuning job (``gateway.fine_tuning.creation``): a model the worker cannot train is refused at
creation with a 400 naming ``model``, even when it is served (an upstream pool may serve more than the worker
trains), instead of being accepted and failing later."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adapters.base_models import trainable_models
from engine.backend import ModelOffer
from engine.fake import FakeEngine
from engine.settings import EngineSettings
from gateway.errors import InvalidRequestError
from gateway.fine_tuning.creation import JobCreator
from gateway.fine_tuning.models import FineTuningJobCreate
from gateway.inference.catalog import ModelCatalog


def test_one_setting_names_the_trainable_models() -> None:
    assert trainable_models(EngineSettings(served_model_name="org/base")) == ("org/base",)


@pytest.mark.parametrize("model", ["served-elsewhere", "never-heard-of"])
async def test_a_model_the_worker_cannot_train_is_refused_at_creation(model: str) -> None:
    served = {name: ModelOffer(FakeEngine()) for name in ("base", "served-elsewhere")}
    catalog = ModelCatalog(SimpleNamespace(models=lambda: served), registry=None, aliases=None)  # type: ignore[arg-type]
    creator = JobCreator(None, None, catalog, None, ("base",), 16)  # type: ignore[arg-type]
    body = FineTuningJobCreate(model=model, training_file="file-abc")
    with pytest.raises(InvalidRequestError) as info:
        await creator.create(None, body)  # type: ignore[arg-type]
    assert (info.value.param, info.value.code) == ("model", "model_not_available")
    assert "base models: base." in info.value.message
