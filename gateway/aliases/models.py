"""The aliases API's shapes (pydantic; requests and responses). A setting names one model (``model``) or a weighted
split (``targets``: one or two ``{"model", "weight"}``, distinct models, weights summing to 100)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.pagination import ListOf
from gateway import bounds
from gateway.inference.schemas import AliasTarget

AliasName = Annotated[
    str,
    Field(
        pattern=bounds.ALIAS_NAME_PATTERN,
        description="[A-Za-z0-9._-], up to 64 characters, starting with a letter or digit; not a served model's name",
    ),
]
MAX_TARGETS = 2


class Gate(BaseModel):
    """An eval every target must have passed: its latest completed run of ``eval_id`` on the target (by the
    target's own name) scores at least ``min_score`` (passed / total of its result counts)."""

    model_config = ConfigDict(extra="forbid")
    eval_id: str = Field(min_length=1, max_length=40)
    min_score: float = Field(ge=0, le=1)


class AliasSetting(BaseModel):
    """Where an alias points (a move). ``gate``: checked now and kept for later moves; ``null`` removes the kept
    one; absent: the kept one (if any) is checked."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, min_length=1, max_length=bounds.MODEL, description="one model")
    targets: list[AliasTarget] | None = Field(
        default=None, min_length=1, max_length=MAX_TARGETS, description="a weighted split"
    )
    gate: Gate | None = None

    @model_validator(mode="after")
    def _one_setting(self) -> AliasSetting:
        if (self.model is None) == (self.targets is None):
            raise ValueError("give either model or targets")
        chosen = self.chosen()
        if len({target.model for target in chosen}) != len(chosen):
            raise ValueError("targets must name different models")
        if sum(target.weight for target in chosen) != 100:
            raise ValueError("the weights of targets must sum to 100")
        return self

    def chosen(self) -> list[AliasTarget]:
        """The targets set: the split, or the one model at weight 100."""
        return [AliasTarget(model=self.model)] if self.model is not None else list(self.targets or ())

    @property
    def gate_given(self) -> bool:
        """Whether the request says anything of the gate (``null`` included)."""
        return "gate" in self.model_fields_set


class AliasCreate(AliasSetting):
    name: AliasName


class AliasOut(BaseModel):
    id: str
    object: Literal["model.alias"] = "model.alias"
    name: str
    targets: list[AliasTarget]
    gate: Gate | None
    version: int
    """The version in force (``/history`` lists them)."""
    created_at: int
    updated_at: int


class AliasList(ListOf[AliasOut]):
    """The tenant's aliases, by name."""


class AliasVersionOut(BaseModel):
    object: Literal["model.alias.version"] = "model.alias.version"
    version: int
    action: Literal["create", "move", "rollback"]
    targets: list[AliasTarget]
    actor: str
    """``operator``, or the id of the tenant's key that acted."""
    created_at: int


class AliasHistory(ListOf[AliasVersionOut]):
    """An alias's versions, newest first (the last ``bounds.ALIAS_HISTORY_KEPT``)."""


class AliasDeleted(BaseModel):
    id: str
    object: Literal["model.alias"] = "model.alias"
    name: str
    deleted: Literal[True] = True
