"""``hookstream_consumer_lag``: log end offset minus committed offset for each assigned event partition.

Refreshed on a timer, so it is right when no record arrives. The end offset is the larger of the listed one
(ListOffsets) and the high watermark of the last fetch: the embedded broker under-reports the former after
multi-record batches (DESIGN.md), and real Kafka agrees on both.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class LagReporter:
    def __init__(self, app: Any, metrics: WorkerMetrics, topics: set[str]) -> None:
        self._app = app
        self._metrics = metrics
        self._topics = topics
        self._reported: set[tuple[str, str]] = set()

    async def refresh(self) -> None:
        consumer = self._app.consumer
        try:
            partitions = [tp for tp in consumer.assignment() if tp.topic in self._topics]
            listed = await consumer.highwaters(*partitions) if partitions else {}
            earliest = await consumer.earliest_offsets(*partitions) if partitions else {}
        except Exception as exc:  # not started or rebalancing: try again next tick
            log.debug("lag not refreshed: %r", exc)
            return
        reported: set[tuple[str, str]] = set()
        for tp in partitions:
            try:
                fetched = consumer.highwater(tp) or 0
            except Exception:
                fetched = 0
            end = max(listed.get(tp) or 0, fetched)
            committed = consumer._committed_offset.get(tp)
            if committed is None:
                committed = earliest.get(tp) or 0
            labels = (tp.topic, str(tp.partition))
            self._metrics.consumer_lag.labels(*labels).set(max(end - committed, 0))
            reported.add(labels)
        for labels in self._reported - reported:  # partitions that moved to another worker
            self._metrics.consumer_lag.remove(*labels)
        self._reported = reported
