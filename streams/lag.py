"""``hookstream_consumer_lag``: log end offset minus committed offset for each assigned event partition, and
``hookstream_committed_offset``, that committed offset (an alert tells a held partition, whose commit does not move
while records wait, from a busy one); ``hookstream_dead_letters_pending``, the lag of the dead-letter topic and the
replay group.

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

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP

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
        """Not while a rebalance runs: Faust forgets the revoked partitions' commits first, and their lag would read
        the whole log, their committed offset its start, until the next assignment seeks to the commits again."""
        if self._app.rebalancing:
            return
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
            self._metrics.committed_offset.labels(*labels).set(committed)
            reported.add(labels)
        for labels in self._reported - reported:  # partitions that moved to another worker
            self._metrics.consumer_lag.remove(*labels)
            self._metrics.committed_offset.remove(*labels)
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


#: Failed counts in a row before the gauge says unknown (NaN) and the log says so.
_FAILURES_TOLERATED = 3


class DeadLetterBacklog:
    """Dead letters that no replay has taken yet: the dead-letter topic's end offsets minus the replay group's
    commits (``hookstream replay`` commits each one it re-publishes or discards), or its log start where it has
    none. Every worker reports the same number, for the alerts to take the largest. Measured in the background: a
    metadata and an offsets request with a short-lived admin client, and end offsets as table recovery reads them
    (``BatchingConsumer.highwaters``: listed, and probed with a fetch, since the embedded broker under-lists them).
    A count that keeps failing (an ACL on the replay group, say) is logged once and makes the gauge NaN (unknown),
    not the last count."""

    def __init__(self, app: Any, metrics: WorkerMetrics, topic: str, group: str, options: dict[str, Any]) -> None:
        self._app = app
        self._metrics = metrics
        self._topic = topic
        self._group = group
        self._options = options
        self._measuring: asyncio.Task[None] | None = None
        self._failures = 0  # in a row

    async def refresh(self) -> None:
        if self._measuring is None or self._measuring.done():
            self._measuring = asyncio.create_task(self._measure())

    async def _measure(self) -> None:
        try:
            self._metrics.dead_letters_pending.set(await self.pending())
        except Exception as exc:  # not started yet, rebalancing or broker trouble: the next tick tries again
            self._failures += 1
            if self._failures < _FAILURES_TOLERATED:
                log.debug("dead letters not counted: %r", exc)
                return
            if self._failures == _FAILURES_TOLERATED:  # once per run of failures: an ACL, say, fails every time
                log.warning("dead letters not counted %d times in a row (last: %r)", self._failures, exc)
            self._metrics.dead_letters_pending.set(float("nan"))  # unknown, not the last count
        else:
            self._failures = 0

    async def pending(self) -> int:
        admin = AIOKafkaAdminClient(**self._options)
        await admin.start()
        try:
            cluster = await admin._client.fetch_all_metadata()
            partitions = [TP(self._topic, p) for p in sorted(cluster.partitions_for_topic(self._topic) or ())]
            if not partitions:
                return 0
            commits = await admin.list_consumer_group_offsets(
                self._group, partitions=[TopicPartition(tp.topic, tp.partition) for tp in partitions]
            )
        finally:
            await admin.close()
        consumer = self._app.consumer
        ends = await consumer.highwaters(*partitions)  # as recovery reads them: the embedded broker under-lists them
        starts = await consumer.earliest_offsets(*partitions)
        total = 0
        for tp in partitions:
            commit = commits.get(TopicPartition(tp.topic, tp.partition))
            taken = max(commit.offset if commit is not None else -1, starts.get(tp) or 0)
            total += max((ends.get(tp) or 0) - taken, 0)
        return total
