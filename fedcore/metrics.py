"""Aggregating the metrics clients report: fit metrics with their updates, evaluate metrics with
their evaluations. One hook type for both: ``(num_examples, metrics)`` per client in, one mapping
out. The default is the mean weighted by examples, per metric over the clients that reported it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

MetricsAggregationFn = Callable[[Sequence[tuple[int, Mapping[str, float]]]], Mapping[str, float]]


def weighted_mean(results: Sequence[tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Per metric name: Σ nᵢ·vᵢ / Σ nᵢ over the clients that reported it with nᵢ > 0."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for n, metrics in results:
        if n <= 0:
            continue
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + n * float(v)
            weights[k] = weights.get(k, 0) + n
    return {k: sums[k] / weights[k] for k in sorted(sums)}


def aggregate(fn: MetricsAggregationFn, results: Sequence[tuple[int, Mapping[str, float]]], what: str) -> dict[str, float]:
    """Run an aggregation hook and keep what a record can hold: finite numbers by name."""
    if not results:
        return {}
    out: dict[str, float] = {}
    for k, v in fn(results).items():
        value = float(v)
        if not isinstance(k, str) or not math.isfinite(value):
            raise ValueError(f"{what} aggregation returned {k!r}: {v!r}; it must map names to finite numbers")
        out[k] = value
    return out
