"""What the API's objects share: they are read from a database row's attributes (``Model.model_validate(row)``),
and their times are Unix seconds (the database keeps naive UTC datetimes)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


Epoch = Annotated[int, BeforeValidator(lambda value: epoch(value) if isinstance(value, datetime) else value)]


class RowObject(BaseModel):
    """An API object whose fields are read from a row's attributes of the same name (or ``validation_alias``)."""

    model_config = ConfigDict(from_attributes=True)
