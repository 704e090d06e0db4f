"""What a model costs a tenant: ``PriceBook.price_for``, the one rule every charge (inference, eval samples,
fine-tuning jobs) is computed by.

The rule, first match wins: the tenant's price for the concrete model; for a fine-tuned model (``ft:``) or a
checkpoint, the tenant's price for what it was made from (a checkpoint's fine-tuned model, then the base
model); the same lookups in the server's default list (``LLMAAS_DEFAULT_MODEL_PRICES``); else nothing: the usage
is billed 0, a warning is logged once per base model, and the operator's console flags the model.

Prices are USD per 1M tokens. Training is priced per trained token: the entry's ``training`` price, else its
``input`` price. A prompt token the engine read from its prefix cache costs the entry's ``cached_input`` price,
else its ``input`` price times the book's cached-input fraction (``LLMAAS_CACHED_INPUT_PRICE_FRACTION``, 0.5 by
default). A batch's request costs its inference price scaled by the book's batch fraction
(``LLMAAS_BATCH_PRICE_FRACTION``), every part of it; further dimensions would scale the ``Price`` found here
likewise, never change how it is found."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Literal

from adapters.registry import lineage
from gateway.tenancy.models import ModelPrice

logger = logging.getLogger(__name__)

UsageKind = Literal["inference", "training", "batch"]
"""What the tokens are used for (an eval run's samples are inference; a batch's requests are inference at the
batch fraction of its price)."""


DEFAULT_CACHED_INPUT_FRACTION = Decimal("0.5")
"""What a cached prompt token costs of the input price where nothing says otherwise (OpenAI's discount)."""


@dataclass(frozen=True)
class Price:
    input: Decimal
    """USD per 1M prompt tokens (per 1M trained tokens for training)."""
    output: Decimal
    """USD per 1M completion tokens (none for training)."""
    cached_input: Decimal
    """USD per 1M prompt tokens read from the engine's prefix cache."""
    priced: bool = True
    """False: no price list has the model, so it is billed 0."""

    def cost_nanos(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
        """Cost in nano-USD (1e-9), rounded up; ``cached_tokens`` of the ``input_tokens`` at the cached price."""
        # USD per 1M tokens * tokens = micro-USD; * 1000 = nano-USD.
        cached = min(cached_tokens, input_tokens)
        micro_usd = (input_tokens - cached) * self.input + cached * self.cached_input + output_tokens * self.output
        return int((micro_usd * 1000).to_integral_value(ROUND_CEILING))

    def scaled(self, fraction: Decimal) -> Price:
        """Every part of the price times ``fraction``."""
        return Price(self.input * fraction, self.output * fraction, self.cached_input * fraction, self.priced)


UNPRICED = Price(Decimal(0), Decimal(0), Decimal(0), priced=False)


class PriceBook:
    """The server's default price list, and the rule that picks a price from it and a tenant's own list; a batch
    request costs ``batch_fraction`` of its model's inference price."""

    def __init__(
        self,
        defaults: Mapping[str, ModelPrice],
        *,
        cached_input_fraction: Decimal = DEFAULT_CACHED_INPUT_FRACTION,
        batch_fraction: Decimal = Decimal(1),
    ) -> None:
        self._defaults = dict(defaults)
        self._cached_input_fraction = cached_input_fraction
        self._batch_fraction = batch_fraction
        self._warned: set[str] = set()

    def _price(self, entry: ModelPrice, kind: UsageKind) -> Price:
        if kind == "training":
            trained = entry.input if entry.training is None else entry.training
            return Price(trained, Decimal(0), trained)
        cached = entry.input * self._cached_input_fraction if entry.cached_input is None else entry.cached_input
        price = Price(entry.input, entry.output, cached)
        return price.scaled(self._batch_fraction) if kind == "batch" else price

    def price_for(self, tenant: Mapping[str, ModelPrice], model: str, kind: UsageKind) -> Price:
        """The price of ``model`` (a served model's id: base, ``ft:`` or checkpoint) for a tenant whose own
        price list is ``tenant``."""
        names = lineage(model)
        for prices in (tenant, self._defaults):
            for name in names:
                entry = prices.get(name)
                if entry is not None:
                    return self._price(entry, kind)
        base = names[-1]  # never a tenant's ft: name in the log
        if base not in self._warned:
            self._warned.add(base)
            logger.warning(
                "model %s has no price (neither the tenant's nor LLMAAS_DEFAULT_MODEL_PRICES): billed 0", base
            )
        return UNPRICED

    def unpriced(self, tenant: Mapping[str, ModelPrice], models: Iterable[str]) -> list[str]:
        """Which of ``models`` a tenant whose price list is ``tenant`` is billed 0 for (what the console flags)."""
        return [model for model in models if not self.price_for(tenant, model, "inference").priced]
