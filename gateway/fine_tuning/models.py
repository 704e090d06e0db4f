"""Request bodies of ``/v1/fine_tuning/jobs`` in OpenAI's shapes (pydantic, strict, bounded: ``method`` supervised
or DPO, or the older top-level ``hyperparameters``), with our extensions: the LoRA adapter's shape and which
checkpoint becomes the model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.recipe import LoraShape
from gateway import bounds
from gateway.bounds import Metadata
from gateway.errors import InvalidRequestError
from gateway.inference.request_fields import refused_unless

FileRef = Annotated[str, Field(min_length=1, max_length=40)]
_DEFAULT_LORA = LoraShape()


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class Hyperparameters(_Body):
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    # Of BASE_LEARNING_RATE (2e-4): up to a rate of 1e-2, above the 3e-3 auto chooses at batch 8.
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=50)] | Literal["auto"] = "auto"


class DpoHyperparameters(Hyperparameters):
    # A pair is two sequences in one forward pass: at most as many sequences a batch as supervised training's.
    batch_size: Annotated[int, Field(ge=1, le=128)] | Literal["auto"] = "auto"
    # DPO's beta: 0.1 is the usual; below 0.01 the preferences pull the model anywhere, above 2 hardly at all.
    beta: Annotated[float, Field(ge=0.01, le=2)] | Literal["auto"] = "auto"


class Supervised(_Body):
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Dpo(_Body):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(_Body):
    """OpenAI's ``method``: supervised fine-tuning, or DPO on preference pairs; only the named method's object."""

    type: Literal["supervised", "dpo"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None

    def hyperparameters(self) -> Hyperparameters:
        """The named method's hyperparameters (each "auto" unless given); a 400 when another method's are given."""
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise InvalidRequestError(
                f"method.{other} is given but method.type is '{self.type}'.", param=f"method.{other}"
            )
        if self.type == "dpo":
            return self.dpo.hyperparameters if self.dpo else DpoHyperparameters()
        return self.supervised.hyperparameters if self.supervised else Hyperparameters()


class LoraOptions(_Body):
    """Our extension: the LoRA adapter's shape."""

    rank: Annotated[int, Field(ge=1, le=64)] = _DEFAULT_LORA.rank
    alpha: Annotated[int, Field(ge=1, le=1024)] = _DEFAULT_LORA.alpha
    target_modules: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")]], Field(min_length=1, max_length=32)
    ] = Field(default_factory=lambda: list(_DEFAULT_LORA.target_modules))
    layers: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    """LoRA on this many of the top decoder layers; "auto": the top third."""

    def shape(self) -> LoraShape:
        return LoraShape(
            rank=self.rank, alpha=self.alpha, target_modules=tuple(self.target_modules), layers=self.layers
        )


class FineTuningJobCreate(_Body):
    model: Annotated[str, Field(min_length=1, max_length=bounds.MODEL)]
    training_file: FileRef
    validation_file: FileRef | None = None
    suffix: Annotated[str, Field(pattern=rf"^[A-Za-z0-9_-]{{1,{bounds.SUFFIX}}}$")] | None = None
    seed: Annotated[int, Field(ge=0, le=bounds.INT32_MAX)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    lora: LoraOptions = Field(default_factory=LoraOptions)
    keep_checkpoint: Literal["best", "last"] = "best"
    """Our extension: with a validation file, the model is the best epoch's checkpoint, or the last one."""
    metadata: Metadata | None = None
    integrations: Annotated[Any, refused_unless([])] = None
    """Weights & Biases reporting: not available here."""

    @property
    def method_type(self) -> Literal["supervised", "dpo"]:
        return self.method.type if self.method else "supervised"

    def requested_hyperparameters(self) -> dict[str, Any]:
        """What the method asks for (the top-level ``hyperparameters`` too, OpenAI's older form: both at once must
        agree on what they both name)."""
        if self.method is None:
            return (self.hyperparameters or Hyperparameters()).model_dump()
        chosen = self.method.hyperparameters().model_dump()
        if self.hyperparameters is not None:
            top = self.hyperparameters.model_dump(exclude_unset=True)
            if any(chosen[name] != value for name, value in top.items()):
                raise InvalidRequestError(
                    "hyperparameters and method give different values; give the method's only.", param="hyperparameters"
                )
        return chosen
