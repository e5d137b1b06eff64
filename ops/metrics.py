"""Prometheus helpers shared by the gateway and the workers.

``LoopCounter`` and ``LoopHistogram`` are counters and histograms for the per-event path. prometheus_client's
own take a lock per increment and walk the bucket list in Python per observation: several per event, which
showed as ~8% of a worker's CPU in a profile. These are written only from the event loop's thread (a plain
``+=``) and turned into samples when scraped, with the same names, labels and exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class _CounterSeries:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _HistogramSeries:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        self.sum += value


class _LoopMetric:
    """Label series created on first use and kept; registered as a collector."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._series: dict[tuple[str, ...], Any] = {}
        registry.register(self)  # type: ignore[arg-type]

    def labels(self, *values: str) -> Any:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            series = self._series[values] = self._new_series()
        return series

    def _new_series(self) -> Any:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]

    def _family(self) -> Metric:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    """A labelled counter (exposed as ``<name>_total``); ``labels(...).inc()`` from the event loop only."""

    def _new_series(self) -> _CounterSeries:
        return _CounterSeries()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, series in list(self._series.items()):
            family.add_metric(list(labels), series.value)
        yield family


class LoopHistogram(_LoopMetric):
    """A labelled histogram with fixed buckets; ``labels(...).observe(v)`` from the event loop only."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(float(b) for b in sorted(buckets))
        self._bucket_names = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> _HistogramSeries:
        return _HistogramSeries(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, series in list(self._series.items()):
            cumulative = map(float, accumulate(series.counts))
            family.add_metric(list(labels), list(zip(self._bucket_names, cumulative, strict=True)), series.sum)
        yield family
