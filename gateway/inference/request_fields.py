"""What every request body of the OpenAI surface is made of (pydantic, strict types: a string where a number belongs
is a 400): the strict base (an unknown field is a 400 naming it, ``extra="forbid"``), the bounded field types, and
``refused_unless`` for a known OpenAI field we cannot honour (null, or a value that asks for nothing, passes;
anything else is a 400 naming it)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from gateway import bounds

ModelId = Annotated[str, Field(min_length=1, max_length=bounds.MODEL)]
Seed = Annotated[int, Field(ge=-(2**63), le=bounds.INT64_MAX)]
EndUser = Annotated[str, Field(max_length=bounds.USER)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int, Field(ge=1, le=bounds.INT32_MAX)]
StopField = str | Annotated[list[str], Field(max_length=4)] | None


def refused_unless(*harmless: Any) -> AfterValidator:
    """A known OpenAI field we cannot honour: null or one of ``harmless`` passes, anything else is a 400."""

    def refuse(value: Any, info: ValidationInfo) -> Any:
        if value is None or any(value == allowed for allowed in harmless):
            return value
        raise ValueError(f"{info.field_name} is not supported by this server")

    return AfterValidator(refuse)


Refused = Annotated[Any, refused_unless()]


class StrictRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
