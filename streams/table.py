"""The objects table, written without Faust's per-write machinery.

A Faust table write (``table[key] = value``) stores the value, then queues a changelog record in Faust's
producer buffer, which sends one record at a time (a ``FutureMessage``, a publish, an aiokafka send with its own
future each) and throttles the stream while it is full: measured, the limit of a worker. ``TableWriter`` keeps
the same guarantees with less: it appends the changelog record to a batch of its own for the partition of the
record being processed (co-partitioning), stores the value, and hands each partition's batch to the producer's
aiokafka client in one piece once the event loop is free again (after the fetch being processed), or as soon as
the batch is full. One future per batch instead of one per record.

The producer flushes these batches before it flushes itself (``FlushingProducer``), and Faust flushes the
producer before it commits offsets, so a committed offset never passes a state change whose changelog record is
not stored; a changelog batch the broker refuses fails that flush (no commit) and crashes the worker (which
then redelivers from the last commit), as Faust does. Batches of one partition go to the producer one at a
time, in order: a compacted changelog must never see an older state of a key after a newer one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from faust.transport.drivers.aiokafka import Producer
from faust.types import TP

from streams.state import StateTooLarge

log = logging.getLogger(__name__)


class ChangelogLost(RuntimeError):
    """Changelog records of stored states were refused or abandoned: committing now could pass them."""


class _Batch:
    """An aiokafka batch being filled for one changelog partition, and the moment it is with the producer."""

    __slots__ = ("builder", "handed")

    def __init__(self, builder: Any, handed: asyncio.Future[None]) -> None:
        self.builder = builder
        self.handed = handed


class TableWriter:
    """Reads and writes the raw bytes of a Faust table (``key_type=bytes, value_type=bytes``)."""

    def __init__(self, app: Any, table: Any, max_record_bytes: int) -> None:
        self._app = app
        self._table = table
        self._max_record_bytes = max_record_bytes
        self._topic: str | None = None
        self._lookup: Callable[[bytes], bytes | None] | None = None
        self._open: dict[int, _Batch] = {}  # partition -> the batch being filled
        self._full: dict[int, _Batch] = {}  # partition -> a full batch waiting for its sender (before the open one)
        self._handing: dict[int, _Batch] = {}  # partition -> the batch its sender is handing over
        self._senders: dict[int, asyncio.Task[None]] = {}  # partition -> the task handing its batches over (last one)
        self._flush_scheduled = False
        self._crash: asyncio.Future[Any] | None = None
        self._unconfirmed = 0  # changelog records written and not yet confirmed stored
        self._lost = False  # a changelog record was refused or abandoned: the store may be ahead of the changelog

    @property
    def consistent(self) -> bool:
        """True when every value stored has its changelog record stored too (what a clean stop needs)."""
        return self._unconfirmed == 0 and not self._lost

    def get(self, key: bytes) -> bytes | None:
        """The stored value (the current record's partition is the one looked in, for RocksDB)."""
        if self._lookup is None:
            self._lookup = _lookup_of(self._table.data)
        return self._lookup(key)

    def check(self, key: bytes, value: bytes) -> None:
        """Raise StateTooLarge if ``value`` cannot be stored under ``key`` (one changelog record of it would be
        over the brokers' or the producer's limit)."""
        if len(key) + len(value) > self._max_record_bytes:
            raise StateTooLarge(
                f"state of {len(value)} bytes is over the {self._max_record_bytes}-byte limit of a changelog record"
            )

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        """Append ``value``'s changelog record to the partition's batch, then store it. When the batch is full
        and no earlier one of the partition is still to be handed over (the usual case: a batch takes thousands
        of states), it is left to the sender and the next one opens without a wait. Otherwise the put waits until
        the producer has taken that earlier one (back-pressure: at most two batches per partition not with the
        producer). ``check`` it first (the processor does, before anything of the event leaves): a batch takes its
        first record whatever its size.

        The store is written only once the record is in a batch: a put that raises (a cancelled wait, a refused
        batch) leaves the store as it was, never ahead of the changelog.
        """
        while True:
            batch = self._open.get(partition)
            if batch is None:
                batch = self._new_batch(partition)
            if batch.builder.append(timestamp=None, key=key, value=value) is not None:
                break
            self._start_sending(partition)  # full: hand it over, then append to the next one
            ahead = self._full.get(partition) or self._handing.get(partition)
            if ahead is None:  # it alone waits for the sender: no put waits (each would, to the end of the fetch)
                self._full[partition] = self._open.pop(partition)
            else:
                await asyncio.shield(ahead.handed)
        self._unconfirmed += 1
        self._table.data[key] = value

    async def flush(self) -> None:
        """Hand the batches not yet with the producer to it and wait until it has taken them (not until they are
        stored: the producer's own flush waits for that). Batches opened meanwhile are not waited for: under
        steady traffic there always is one, and a commit must not wait for a lull."""
        pending = [batch.handed for batch in (*self._handing.values(), *self._full.values(), *self._open.values())]
        self._hand_over_pending()
        if pending:
            await asyncio.gather(*(asyncio.shield(handed) for handed in pending))

    def raise_if_lost(self) -> None:
        """Raise ChangelogLost if a changelog batch was refused or abandoned (checked after the producer's flush,
        which does not raise: nothing may be committed past such a batch)."""
        if self._lost:
            raise ChangelogLost("changelog records of stored states were not stored: not committing")

    def _new_batch(self, partition: int) -> _Batch:
        builder = self._app.producer._ensure_producer().create_batch()
        batch = self._open[partition] = _Batch(builder, asyncio.get_running_loop().create_future())
        if not self._flush_scheduled:  # hand the batches over once the current fetch (or loop turn) is done
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_soon)
        return batch

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        self._hand_over_pending()

    def _hand_over_pending(self) -> None:
        for partition in {*self._full, *self._open}:
            self._start_sending(partition)

    def _next_batch(self, partition: int) -> _Batch | None:
        """The partition's full batch if one waits, else its open one (taken: later records go to a new one)."""
        full = self._full.pop(partition, None)
        return full if full is not None else self._open.pop(partition, None)

    def _start_sending(self, partition: int) -> None:
        sender = self._senders.get(partition)
        if sender is None or sender.done():  # a finished sender takes nothing more (it found no batch left)
            self._senders[partition] = asyncio.get_running_loop().create_task(self._send(partition))

    async def _send(self, partition: int) -> None:
        """Hand the partition's batches to the producer, one at a time and in order, until none is left."""
        while (batch := self._next_batch(partition)) is not None:
            self._handing[partition] = batch
            count = batch.builder.record_count()
            batch.builder.close()  # nothing else may join it once its count is taken
            try:
                if self._topic is None:
                    self._topic = self._table.changelog_topic.get_topic_name()
                producer = self._app.producer._ensure_producer()
                delivery = await producer.send_batch(batch.builder, self._topic, partition=partition)
            except BaseException as exc:
                self._unconfirmed -= count
                self._abandon(partition, batch, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            finally:
                del self._handing[partition]
            batch.handed.set_result(None)
            delivery.add_done_callback(lambda done, count=count: self._sent(done, count))

    def _abandon(self, partition: int, batch: _Batch, error: BaseException) -> None:
        """A batch could not be handed over: its states (and those of the partition's next batches, which can no
        longer follow it in order) are lost to the changelog; the worker stops."""
        failed = [batch]
        while (following := self._next_batch(partition)) is not None:
            self._unconfirmed -= following.builder.record_count()
            failed.append(following)
        for lost in failed:
            lost.handed.set_exception(ChangelogLost(f"changelog batch not handed to the producer: {error!r}"))
            lost.handed.exception()  # retrieved: waiters (if any) still get it
        if isinstance(error, asyncio.CancelledError):
            self._lost = True
            log.error("changelog records abandoned unsent; local state will be rebuilt at next start")
        else:
            self._refused(error)

    def _sent(self, delivery: asyncio.Future[Any], count: int) -> None:
        self._unconfirmed -= count
        if delivery.cancelled():  # the producer stopped with the batch unsent
            self._lost = True
            log.error("changelog records abandoned by the producer; local state will be rebuilt at next start")
            return
        error = delivery.exception()
        if error is not None:
            self._refused(error)
            return
        metadata = delivery.result()  # the batch's first offset
        # what the RocksDB store remembers so that a restart only recovers what it lacks
        self._table.data.set_persisted_offset(TP(metadata.topic, metadata.partition), metadata.offset + count - 1)

    def _refused(self, error: BaseException) -> None:
        self._lost = True
        log.error("changelog records not stored: %r; stopping the worker so nothing is committed past them", error)
        if self._crash is None:
            self._crash = asyncio.ensure_future(self._app.crash(error))


def _lookup_of(store: Any) -> Callable[[bytes], bytes | None]:
    """A read that answers None for a missing key. A Faust store's own ``get`` raises and catches a KeyError
    for each: half the reads of a workload of new objects (measured ~3% of a worker's samples)."""
    plain = getattr(store, "data", None)
    if isinstance(plain, dict):  # the memory store keeps its values in a plain dict
        return plain.get
    return cast(Callable[[bytes], "bytes | None"], store._get)  # RocksDB: None when absent, no KeyError


class FlushingProducer(Producer):
    """Faust's aiokafka producer, flushing the table writer's batches before itself (commits, rebalances,
    shutdown all flush the producer first) and raising after itself if one was not stored: aiokafka's flush
    does not raise, and Faust commits offsets right after it."""

    table_writer: TableWriter | None = None

    async def flush(self) -> None:
        writer = self.table_writer
        if writer is not None:
            await writer.flush()
        await super().flush()
        if writer is not None:
            writer.raise_if_lost()
