"""The loop-local counters and histograms expose exactly what prometheus_client's own would."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ops.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _exposition(registry: CollectorRegistry) -> list[str]:
    """Samples without the ``_created`` series (prometheus_client's own add them; Prometheus does not need them)."""
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_loop_histogram_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_histogram = LoopHistogram("h_seconds", "help", ["event_type"], BUCKETS, ours)
    reference = Histogram("h_seconds", "help", ["event_type"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    values = [rng.choice([0.0, *BUCKETS, 99.0]) for _ in range(200)]  # exactly on every bound, and beyond
    values += [rng.expovariate(20) for _ in range(2000)]
    for value in values:
        label = rng.choice(["a.b", "c.d", 'q"uote'])
        loop_histogram.labels(label).observe(value)
        reference.labels(label).observe(value)
    assert _exposition(ours) == _exposition(theirs)
    assert any(line.startswith('h_seconds_bucket{event_type="a.b",le="0.0005"}') for line in _exposition(ours))


def test_loop_counter_matches_prometheus_client() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop_counter = LoopCounter("events_processed", "help", ["topic", "outcome"], ours)
    reference = Counter("events_processed", "help", ["topic", "outcome"], registry=theirs)
    rng = random.Random(3)
    for _ in range(1000):
        labels = (rng.choice(["t1", "t2"]), rng.choice(["ok", "duplicate"]))
        amount = rng.choice([1, 1, 2.5])
        loop_counter.labels(*labels).inc(amount)
        reference.labels(*labels).inc(amount)
    assert _exposition(ours) == _exposition(theirs)
    assert len(_exposition(ours)) == 4


def test_wrong_label_count_is_refused() -> None:
    counter = LoopCounter("c", "help", ["a", "b"], CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
