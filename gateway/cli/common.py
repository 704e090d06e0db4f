"""What the commands share: the settings root (read from the environment once per process and handed down),
the database (opened and migrated once per process, ``gateway.bootstrap``) and the tenancy service on it, and
results printed as JSON (an API error as one line on stderr, exit status 1)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

import typer
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from gateway.bootstrap import open_database
from gateway.db import Database
from gateway.errors import APIError, as_api_error
from gateway.settings import Settings
from gateway.tenancy.service import TenancyService


@cache
def settings() -> Settings:
    return Settings.from_environment()


@cache
def database() -> Database:
    return open_database(settings().gateway)


def tenancy() -> TenancyService:
    return TenancyService(database())


def print_json(value: Any) -> None:
    def default(obj: Any) -> Any:
        if isinstance(obj, BaseModel):
            return obj.model_dump(mode="json")
        if isinstance(obj, datetime | Decimal):
            return str(obj)
        raise TypeError(type(obj))

    typer.echo(json.dumps(value, default=default, indent=2))


def run(action: Callable[[], Any]) -> None:
    try:
        print_json(action())
    except ValidationError as exc:  # an option out of bounds: said as the API would say it
        typer.echo(f"error: {as_api_error(RequestValidationError(exc.errors())).message}", err=True)
        raise typer.Exit(1) from exc
    except APIError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
