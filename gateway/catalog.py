"""The models this gateway serves, by the id clients put in ``model``."""

from __future__ import annotations

from dataclasses import dataclass

from engine.protocol import Engine
from gateway.errors import ModelNotFound


@dataclass(frozen=True)
class ServedModel:
    id: str
    engine: Engine
    created: int
    owned_by: str = "llmaas"

    def card(self) -> dict[str, object]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


class ModelCatalog:
    def __init__(self, models: list[ServedModel]) -> None:
        self._models = {model.id: model for model in models}

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, model_id: str) -> ServedModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelNotFound(model_id) from None
