"""What the usage routes answer as JSON: one row per group and period (a column appears only when the report is
grouped or bucketed by it) and the totals. Costs are decimal strings in USD."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class UsageRow(BaseModel):
    tenant_id: str | None = Field(default=None, description="with group_by=tenant")
    key_id: str | None = Field(default=None, description="with group_by=key")
    model: str | None = Field(default=None, description="with group_by=model")
    kind: str | None = Field(default=None, description="with group_by=kind")
    period_start: str | None = Field(default=None, description="unless bucket=none")
    requests: int
    prompt_tokens: int
    cached_tokens: int = Field(description="Of prompt_tokens, those read from the engine's prefix cache")
    completion_tokens: int
    total_tokens: int
    cost: str


class UsageTotals(BaseModel):
    requests: int
    prompt_tokens: int
    cached_tokens: int = Field(description="Of prompt_tokens, those read from the engine's prefix cache")
    completion_tokens: int
    total_tokens: int
    cost: str


class UsageReport(BaseModel):
    """Validated from the report ``UsageReports.report`` makes: only the columns it has are set (and answered)."""

    object: Literal["list"] = "list"
    data: list[UsageRow]
    totals: UsageTotals


CSV_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}
"""With ``format=csv`` the same rows come as CSV."""
