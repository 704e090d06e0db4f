"""The values a job gets for each "auto" hyperparameter are chosen from its data; explicit ones are kept."""

from __future__ import annotations

import pytest

from adapters.hyperparameters import Hyperparameters, choose


@pytest.mark.parametrize(
    ("examples", "chosen"),
    [
        (150, Hyperparameters(n_epochs=4, batch_size=8, learning_rate_multiplier=8.0)),
        (300, Hyperparameters(n_epochs=2, batch_size=8, learning_rate_multiplier=8.0)),
        (100, Hyperparameters(n_epochs=6, batch_size=6, learning_rate_multiplier=6.93)),
        (20, Hyperparameters(n_epochs=10, batch_size=1, learning_rate_multiplier=2.83)),
        (5000, Hyperparameters(n_epochs=2, batch_size=8, learning_rate_multiplier=8.0)),
    ],
)
def test_auto_values_follow_the_dataset_size(examples: int, chosen: Hyperparameters) -> None:
    assert choose(examples, {}) == chosen
    assert choose(examples, {"n_epochs": "auto", "batch_size": "auto"}) == chosen


def test_explicit_values_are_kept_and_the_rest_follow_them() -> None:
    chosen = choose(150, {"n_epochs": 7, "batch_size": 2})
    assert (chosen.n_epochs, chosen.batch_size) == (7, 2)
    assert chosen.learning_rate_multiplier == 4.0  # smaller batches take smaller steps
    assert choose(150, {"learning_rate_multiplier": 0.5}).learning_rate_multiplier == 0.5
