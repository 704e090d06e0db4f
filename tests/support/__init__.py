"""What the test modules share and is not a fixture (the fixtures live in ``tests/conftest.py``): the constants
below, and one module per mechanism: a gateway process (``gateway_process``), a model-server stand-in
(``fake_upstream``), tenants and keys (``tenants``), a console sign-in (``console``), the app in process on a
fake engine (``in_process``), databases and the ledger (``databases``), Prometheus samples (``metrics``)."""

from __future__ import annotations

from pathlib import Path

from engine.settings import DEFAULT_MODEL_ID

REPO = Path(__file__).resolve().parents[2]
MODEL = DEFAULT_MODEL_ID
ADMIN_KEY = "sk-admin-test-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
"""The operator's headers."""
