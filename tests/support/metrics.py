"""Prometheus samples read from a ``/metrics`` text."""

from __future__ import annotations


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, summed over those whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        if all(f'{key}="{val}"' in label_text for key, val in labels.items()):
            total += float(value)
    return total
