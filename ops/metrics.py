"""Prometheus helpers shared by the gateway and the workers."""

from __future__ import annotations

from typing import Any


class Children:
    """Cached label children of a metric: ``labels()`` costs a lock and tuple building on every call, which
    shows in a per-event profile; a dict lookup does not."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child
