"""``hookstream_consumer_lag``: log end offset minus committed offset for each assigned event partition.

Refreshed on a timer, so it is right when no record arrives. The end offset is the larger of the listed one
(ListOffsets) and the high watermark of the consumer's last fetch: the embedded broker under-reports the former
after multi-record batches (DESIGN.md), and real Kafka agrees on both. Listing offsets is a broker round trip
through Faust's consumer thread (seconds, measured, while fetches are in flight), so it runs in the background
and the timer itself only reads what is known.
"""

from __future__ import annotations

import asyncio
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
        self._listed: dict[Any, int] = {}
        self._earliest: dict[Any, int] = {}
        self._listing: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        consumer = self._app.consumer
        try:
            partitions = [tp for tp in consumer.assignment() if tp.topic in self._topics]
        except Exception as exc:  # not started yet
            log.debug("lag not refreshed: %r", exc)
            return
        if partitions and (self._listing is None or self._listing.done()):
            self._listing = asyncio.create_task(self._list_offsets(partitions))
        reported: set[tuple[str, str]] = set()
        for tp in partitions:
            try:
                fetched = consumer.highwater(tp) or 0
            except Exception:
                fetched = 0
            end = max(self._listed.get(tp, 0), fetched)
            committed = consumer._committed_offset.get(tp)
            if committed is None:
                committed = self._earliest.get(tp, end)  # nothing committed yet: all of the log is behind
            labels = (tp.topic, str(tp.partition))
            self._metrics.consumer_lag.labels(*labels).set(max(end - committed, 0))
            reported.add(labels)
        for labels in self._reported - reported:  # partitions that moved to another worker
            self._metrics.consumer_lag.remove(*labels)
        self._reported = reported

    async def _list_offsets(self, partitions: list[Any]) -> None:
        consumer = self._app.consumer
        try:
            self._listed.update(await consumer.listed_end_offsets(*partitions))
            missing = [tp for tp in partitions if tp not in self._earliest]
            if missing:
                self._earliest.update(await consumer.earliest_offsets(*missing))
        except Exception as exc:  # rebalancing or broker trouble: the next tick tries again
            log.debug("offsets not listed: %r", exc)
