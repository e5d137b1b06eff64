"""The objects table, written without Faust's per-write machinery.

A Faust table write (``table[key] = value``) stores the value, then queues a changelog record in Faust's
producer buffer, which sends one record at a time (a ``FutureMessage``, a publish, an aiokafka send each) and
throttles the stream while it is full: measured, the limit of a worker. ``TableWriter`` keeps the same
guarantees with less: it stores the value in the table's store, then hands the changelog record straight to the
producer's aiokafka client, into the partition of the record being processed (co-partitioning). Faust flushes
that producer before it commits offsets, so a committed offset never passes a state change whose changelog
record is not stored; a changelog record the broker refuses crashes the worker (which then redelivers from
the last commit), as Faust does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)


class TableWriter:
    """Reads and writes the raw bytes of a Faust table (``key_type=bytes, value_type=bytes``)."""

    def __init__(self, app: Any, table: Any) -> None:
        self._app = app
        self._table = table
        self._topic: str | None = None
        self._crash: asyncio.Future[Any] | None = None
        self._unconfirmed = 0  # changelog records sent and not yet confirmed stored
        self._lost = False  # a changelog record was refused or abandoned: the store may be ahead of the changelog

    @property
    def consistent(self) -> bool:
        """True when every value stored has its changelog record stored too (what a clean stop needs)."""
        return self._unconfirmed == 0 and not self._lost

    def get(self, key: bytes) -> bytes | None:
        """The stored value (the current record's partition is the one looked in, for RocksDB)."""
        value: bytes | None = self._table.data.get(key)
        return value

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Send ``value``'s changelog record, then store it; returns once the producer has taken the record (it
        waits while the partition's batch is full: back-pressure).

        The store is written only once the record is queued: a send that raises (a record too large, a producer
        closing, a cancelled wait) leaves the store as it was, never ahead of the changelog.
        """
        if self._topic is None:
            self._topic = self._table.changelog_topic.get_topic_name()
        delivery = await self._app.producer.send(self._topic, key, value, partition, None, None)
        self._table.data[key] = value
        self._unconfirmed += 1
        delivery.add_done_callback(self._sent)

    def _sent(self, delivery: asyncio.Future[Any]) -> None:
        self._unconfirmed -= 1
        if delivery.cancelled():  # the producer stopped with the record unsent
            self._lost = True
            log.error("changelog record abandoned by the producer; local state will be rebuilt at next start")
            return
        error = delivery.exception()
        if error is not None:
            self._lost = True
            log.error("changelog record not stored: %r; stopping the worker so nothing is committed past it", error)
            self._crash = asyncio.ensure_future(self._app.crash(error))
            return
        metadata = delivery.result()
        # what the RocksDB store remembers so that a restart only recovers what it lacks
        self._table.data.set_persisted_offset(TP(metadata.topic, metadata.partition), metadata.offset)
