"""Bootstrap, in one place: what a gateway process does once before it serves, and the worker and the command
line before they work: the data dir made private, the database migrated (``open_database``), the admin key
read or generated once (``bootstrap``) and the base model prepared (``prepare_model``).

``llmaas serve`` bootstraps before it starts the worker and the engine (it shows the admin key it generated)
and hands the result to the app; an app made without one (tests, the fake gateway) bootstraps in its lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.model_prep import resolve_model_dir
from engine.settings import EngineSettings
from gateway.db import Database
from gateway.db.database import sqlite_url
from gateway.private_files import private_dir
from gateway.settings import GatewaySettings
from gateway.tenancy.admin_key import admin_key_path, load_or_create_admin_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bootstrapped:
    database: Database
    """Migrated to the newest schema."""
    admin_key: str
    admin_key_generated: bool
    """Generated just now (into ``<data_dir>/admin_key``, 0600): ``llmaas serve`` shows it once."""


def open_database(settings: GatewaySettings) -> Database:
    """The database (``LLMAAS_DATABASE_URL``, else SQLite in the data dir, made private), migrated."""
    private_dir(settings.data_dir)
    database = Database(settings.database_url or sqlite_url(settings.data_dir))
    database.migrate()
    return database


def bootstrap(settings: GatewaySettings) -> Bootstrapped:
    database = open_database(settings)
    admin_key, generated = load_or_create_admin_key(settings)
    if generated:  # the key itself is never logged; `llmaas serve` shows it on the terminal
        logger.warning("generated the admin key into %s (0600)", admin_key_path(settings.data_dir))
    return Bootstrapped(database, admin_key, generated)


def prepare_model(settings: EngineSettings) -> Path:
    """The base model's dir: the configured one (checked), or the default model, converted on first use."""
    return resolve_model_dir(settings)
