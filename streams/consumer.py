"""Faust's consumer with a batch path for event topics, and end offsets that survive the embedded broker.

Faust hands every fetched record through ``Service.wait_first`` (two tasks per record), the conductor (flow
control, a lock, an Event, a queue) and the stream iterator (a loop cycle, sensors) before an agent sees it:
most of a worker's time, measured (ARCHITECTURE.md). For the event topics, this consumer skips all of that:
each fetch's records go to the actors in one call, with the bookkeeping Faust needs for acks and commits kept
(read offsets, gaps, the set of unacked records). Every other topic (table changelogs during recovery, Faust's
own) takes Faust's path unchanged.

End offsets: table recovery reads a changelog up to the end offset the broker lists. The embedded broker lists
the last *batch's* base offset + 1 (DESIGN.md), so recovery would stop short after multi-record batches; the
high watermark a fetch returns is right. ``highwaters`` therefore takes the larger of the two, probing with a
short-lived consumer of its own (``fetched_high_watermarks``): a fetch per partition, once per recovery, and
nothing to give up on real Kafka, where both agree (the dead-letter count, streams/lag.py, reads them here too).
Producers can then batch changelog records normally on every broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from aiokafka import AIOKafkaConsumer as PlainConsumer
from aiokafka import TopicPartition
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message
from mode import Service

log = logging.getLogger(__name__)

BatchSink = Callable[[list[Message]], Awaitable[None]]
#: told of records gone before this consumer read them: their topic and how many
SkipSink = Callable[[str, int], None]
_Fetched = tuple[Mapping[TP, list[Any]] | None, set[TP] | None, int]
#: What the log says of records gone before they were read, and of a log behind its commit (tests/soak.py fails on
#: either: nothing expires or is truncated in a soak)
RECORDS_GONE = "were gone before any worker read them"
LOG_BEHIND = "its log was truncated or recreated"


class _Finished(NamedTuple):
    """A revoked partition's commit bookkeeping, kept aside while Faust drops its own (``on_partitions_revoked``)."""

    base: int
    acked: set[int]
    gaps: Any  #: Faust's IntervalTree of offsets the broker skipped
    committed: int | None


class BatchingConsumer(AIOKafkaConsumer):
    """Delivers records of ``batch_topics`` to ``batch_sink`` a fetch at a time (set both before it starts)."""

    batch_topics: frozenset[str] = frozenset()
    batch_sink: BatchSink | None = None
    #: aiokafka client options for the end-offset probe (None: trust the listed offsets)
    probe_options: dict[str, Any] | None = None
    skip_sink: SkipSink | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: per partition, the next offset a commit may start from: the first record fetched since the assignment,
        #: then each committed offset (see ``_new_offset``)
        self._commit_bases: dict[TP, int] = {}
        #: event-topic partitions resumed and waiting for their seek (``resume_partitions``), with the consumer
        #: generation they were resumed in
        self._unsought: dict[TP, int] = {}

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: the end of the run of finished records that starts at the partition's base.

        Faust's own rule starts the run at the lowest acked offset, checked against the last commit with an
        off-by-one (committed 500, acked 501: it commits 502) and not at all when the committed offset is
        unknown (0, none yet, or just after a rebalance revoked it). Faust acks in order, so that never shows;
        actors finish out of order, so it would commit past a record still in a retry, or one dropped by a
        rebalance. Here nothing is committed until the record at the base itself is finished; offsets the broker
        skipped (Faust's gaps) count as finished, and a partition without a known base is not committed.
        """
        base = self._commit_bases.get(tp)
        if base is None:
            return None
        acked = self._acked[tp]
        finished = self._acked_index[tp]
        gaps = self._gap[tp]
        end = base
        if acked:
            while end in finished or gaps.overlaps_point(end):
                end += 1
        if end == base:
            # a base above the committed offset: the records between were gone before they were read (_follow);
            # committed now, a restart or a rebalance does not find them gone again
            committed = self._committed_offset[tp]
            return base if committed is not None and base > committed else None
        acked[:] = [offset for offset in acked if offset >= end]
        finished.difference_update(range(base, end))
        gaps.chop(0, end)
        self._commit_bases[tp] = end
        return end

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Note offsets ``offset_from`` to ``offset_to`` as gone (counted finished by ``_new_offset``). Faust's own
        starts a gap no lower than the committed offset + 1, but the committed offset is the next one to read:
        records gone from exactly there (right after a commit of everything read) left that offset neither
        finished nor a gap, and the partition's commits stopped there until a rebalance or a restart."""
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed)
        if offset_from <= offset_to:
            gaps = self._gap[tp]
            gaps.addi(offset_from, offset_to + 1)  # intervals exclude their end
            await asyncio.sleep(0)  # as Faust's: the loop answers meanwhile (and a rebalance may begin: _collect)
            gaps.merge_overlaps()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit what the revoked partitions finished, once the records in flight are done.

        Faust drops a revoked partition's bookkeeping (acks, gaps, committed offset) before it waits for the records
        in flight, so the commit that follows finds nothing of it, and its next owner processed again everything
        since the last periodic commit (360 of about 2,400 events in a test with a worker joining and leaving: each
        one a duplicate, or an emit sent twice). The bookkeeping is kept aside here, merged with the acks that came
        in while Faust waited, and committed by the rule of ``_new_offset``: Kafka takes a commit of the generation
        that is ending until this member rejoins, and the next owner reads it once the rebalance completes. Not when
        the worker stops: Faust closes the consumer instead, and a commit on a closing client could fail the stop
        (the next owner then processes those records again, as before)."""
        leaving = {
            tp: _Finished(
                self._commit_bases.pop(tp),
                self._acked_index.get(tp, set()),
                self._gap[tp],
                self._committed_offset.get(tp),
            )
            for tp in revoked
            if tp in self._commit_bases
        }
        # without a base, Faust's own commit here takes nothing of a revoked partition
        await super().on_partitions_revoked(revoked)
        if not leaving or self.app.should_stop:  # stopping: Faust closed the consumer instead
            return
        for tp, kept in leaving.items():
            finished = kept.acked | self._acked_index.pop(tp, set())
            self._commit_bases[tp] = kept.base
            self._acked_index[tp] = finished
            self._acked[tp] = sorted(finished)
            self._gap[tp] = kept.gaps
            self._committed_offset[tp] = kept.committed
        # Not bounded here: a timeout would leave the commit running in Faust's consumer thread, where aiokafka
        # retries it with the generation of the moment, which after the rejoin could move another owner's commit
        # back. Unbounded, it ends before this member rejoins: done, or refused as the group has moved on (Faust
        # then commits nothing), like the producer flush Faust's revoke already waits for.
        try:
            await self.force_commit(set(leaving))
        except Exception as exc:  # the changelog could not be flushed: the next owner processes them again
            log.warning("cannot commit what the revoked partitions finished: %r", exc)
        finally:
            for tp in leaving:
                self._commit_bases.pop(tp, None)
                self._acked.pop(tp, None)
                self._acked_index.pop(tp, None)
                self._gap.pop(tp, None)
                self._committed_offset.pop(tp, None)

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        """Event-topic partitions are held back until the seek that follows is done.

        After a rebalance Faust resumes the stream partitions, then seeks them to their committed offsets. A fetch
        in between reads from where the consumer stood; its records were collected with no read offset, then read
        again after the seek: submitted twice, or taken for a truncated log. Held back, they are fetched only from
        the offsets the seek set (``perform_seek`` resumes them). Both of Faust's resumes of stream partitions are
        followed by that seek; other partitions (changelogs in recovery) resume at once."""
        tps = set(tps)
        held = {tp for tp in tps if tp.topic in self.batch_topics}
        self._unsought.update(dict.fromkeys(held, self.app.consumer_generation_id))
        super().resume_partitions(tps - held)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, then resume the event-topic partitions held back for it in this consumer
        generation, if they are still assigned. Also if the seek failed or timed out (Faust's recovery then goes on
        without it, as it did before), but not into a later generation: a rebalance that cancels the seek (Faust's
        recovery starts again) pauses them for its own recovery, which resumes and seeks them again."""
        generation = self.app.consumer_generation_id
        held = {tp for tp, held_in in self._unsought.items() if held_in == generation}
        self._unsought.clear()  # of an earlier generation: its assignment's recovery holds them again
        try:
            await super().perform_seek()
        finally:
            if held and self.app.consumer_generation_id == generation:
                super().resume_partitions(held & self.assignment())

    async def _seek_back(self) -> None:
        """Seek to the committed offsets after dropping a fetch. Faust's own seek: partitions held for the seek of
        a recovery (``resume_partitions``) stay held until that one."""
        await super().perform_seek()

    def forget(self, message: Message) -> None:
        """Stop waiting for ``message``'s ack: it will not be processed (its partition is being rebalanced).

        A rebalance waits until no tracked record is unacked. Faust tracks them in a WeakSet and relies on a
        dropped record being collected, but a local variable of a suspended loop (the last record of a fetch, in
        ``_drain_messages`` or an agent) keeps one alive: the rebalance then waited forever (seen in the soak).
        """
        self._unacked_messages.discard(message)

    def forget_unfinished(self) -> None:
        """Stop waiting for any record's ack: the actors were stopped, none will come (``HookstreamApp``). That
        includes records fetched and never submitted (the fetch loop stopped in the middle of a fetch)."""
        self._unacked_messages.clear()

    async def listed_end_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        """End offsets as the broker lists them (ListOffsets): cheap, and what lag reporting combines with the
        fetched high watermark."""
        return await super().highwaters(*partitions)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """End offsets for table recovery (and the dead-letter count): the larger of the listed one and a fetch's
        high watermark. A correction is logged at DEBUG: it is the embedded broker's known defect, and the
        dead-letter count meets it every time it counts."""
        listed = dict(await self.listed_end_offsets(*partitions))
        if self.probe_options is None or not partitions:
            return listed
        fetched = await fetched_high_watermarks(self.probe_options, partitions, listed)
        corrected = {tp: max(listed.get(tp) or 0, fetched.get(tp, 0)) for tp in partitions}
        for tp in partitions:
            if corrected[tp] != (listed.get(tp) or 0):
                log.debug(
                    "end offset of %s[%d]: listed %s, fetched %d", tp.topic, tp.partition, listed.get(tp), corrected[tp]
                )
        return corrected

    async def _drain_messages(self, fetcher: Any) -> None:
        # Faust's own loop (faust/transport/consumer.py: _drain_messages over getmany), with two changes. Each
        # partition's records of a fetch are walked directly instead of through getmany's round-robin async
        # generator (one high watermark per partition, not per record; measured: ~7% less main-thread CPU):
        # records of batch topics are collected and handed to the sink in one call, records of other topics take
        # Faust's path. And the next fetch is asked for before a fetch's records are processed, so the broker's
        # round trip and aiokafka's parsing (in Faust's consumer thread) overlap the processing instead of
        # following it: a drain had spent over a third of its time waiting for fetches (bench/README.md, sixth round).
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        ahead: asyncio.Task[_Fetched] | None = None
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                fetching, ahead = ahead or asyncio.create_task(self._fetch()), None
                records, active_partitions, generation = await fetching
                if records is None or self.should_stop:
                    continue
                if self._outdated(generation):
                    # they may be another assignment's: as getmany, seek back to the committed offsets and fetch
                    # again (unless nothing came: an empty fetch moved no position)
                    if any(records.values()):
                        try:
                            await self._seek_back()
                        except Exception as exc:
                            log.warning("cannot seek back to the committed offsets: %r", exc)
                    continue
                ahead = asyncio.create_task(self._fetch())
                await asyncio.sleep(0)  # its first step hands the request to the consumer thread (sinks may not yield)
                batch: list[Message] = []
                for tp, tp_records in records.items():
                    if self._outdated(generation):
                        break  # a rebalance began meanwhile (as getmany, stop): the rest is fetched again after it
                    if not (active_partitions is None or tp in active_partitions or tp in self._buffered_partitions):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if self.batch_sink is not None and tp.topic in self.batch_topics:
                        await self._collect(tp, tp_records, batch)
                    else:
                        if batch:  # keep order with records of other topics
                            await self.batch_sink(batch)  # type: ignore[misc]
                            batch = []
                        await self._dispatch(tp, tp_records)
                if batch:
                    await self.batch_sink(batch)  # type: ignore[misc]
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            if ahead is not None:  # stopping: what it fetched is not processed (nor committed)
                ahead.cancel()
                await asyncio.wait([ahead])

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every partition to its committed offset, and event-topic partitions without one (none yet, or 0)
        to their beginning, where the consumer starts them anyway (``auto_offset_reset`` is earliest). aiokafka
        leaves those where they are: after records fetched for a new assignment were dropped (above), that is past
        records nothing processed, and the first commit would pass them."""
        committed = await super().seek_to_committed()
        fresh = [tp for tp, offset in committed.items() if tp.topic in self.batch_topics and (offset or 0) <= 0]
        if fresh:
            await cast(Any, self)._thread.seek_to_beginning(*fresh)
        return committed

    def _outdated(self, generation: int | None) -> bool:
        """True if a rebalance has paused the flow, or began (and maybe ended), since a fetch in ``generation``."""
        return not self.flow_active or self.app.consumer_generation_id != generation

    async def _fetch(self) -> _Fetched:
        """The next records, the partitions they were fetched for, and the generation they were fetched in (read
        once the flow runs: a fetch waiting through a rebalance belongs to the generation after it)."""
        if not self.flow_active:
            await cast(Service, self).wait(self.can_resume_flow)  # type: ignore[arg-type]  # as Faust does
        generation = self.app.consumer_generation_id
        records, active_partitions = await self._wait_next_records(1.0)
        return records, active_partitions, generation

    async def _collect(self, tp: TP, records: Iterable[Any], batch: list[Message]) -> None:
        """Append one partition's new records to ``batch``, tracked as unacked."""
        to_message = self._to_message
        unacked_add = self._unacked_messages.add
        read_offset = self._read_offset[tp]
        for record in records:
            offset = record.offset
            if read_offset is not None and offset < read_offset:
                # aiokafka returns nothing below its position, and every seek sets the read offset: only its reset
                # of a position past the log's end (Faust would drop these as already seen)
                self._log_behind_commit(tp, offset, read_offset)
                read_offset = None
            message = to_message(tp, record)
            gap = self._follow(tp, offset, read_offset, record)
            if gap is not None:
                await self._add_gap(tp, gap, offset - 1)  # may yield: the only point a rebalance can begin
                if self._outdated(message.generation_id):
                    # a rebalance began (the flow paused; the generation changes only once it ends): its seek decides
                    # where reading resumes, and the revoke dropped the commit base the next record would set again
                    return
            message.tracked = True
            unacked_add(message)  # pending ack: graceful shutdown and rebalances wait for it
            batch.append(message)
            read_offset = offset
        self._read_offset[tp] = read_offset

    async def _dispatch(self, tp: TP, records: Iterable[Any]) -> None:
        """Faust's path, record by record (table changelogs during recovery, Faust's own topics)."""
        for record in records:
            read_offset = self._read_offset[tp]
            if read_offset is not None and record.offset < read_offset:
                continue
            message = self._to_message(tp, record)
            gap = self._follow(tp, message.offset, read_offset, record)
            if gap is not None:
                await self._add_gap(tp, gap, message.offset - 1)
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            self._read_offset[tp] = message.offset

    def _follow(self, tp: TP, offset: int, read_offset: int | None, record: Any) -> int | None:
        """Keep the commit rule's bookkeeping for ``record`` at ``offset`` read after ``read_offset``: the first record
        of the current assignment is the partition's commit base. Returns the first offset the broker skipped
        before this one, if any (Faust's gap, for the caller to add), else None.

        Offsets skipped are records gone before they were read: expired by the topic's retention or deleted while
        the workers were down or behind (Kafka's consumer then starts from the log's first record), as the first
        record of an assignment above the committed offset, or later as a gap. hookstream's producers write no
        transaction markers, the only gap the event topics have otherwise."""
        if tp not in self._commit_bases:
            self._commit_bases[tp] = offset
            if read_offset and offset > read_offset:  # read_offset is the committed offset here (perform_seek)
                self._skipped(tp, read_offset, offset, record.timestamp)
        elif read_offset is not None and offset - read_offset > 1 and self.app.topics.acks_enabled_for(tp.topic):
            self._skipped(tp, read_offset + 1, offset, record.timestamp)
            return read_offset + 1
        return None

    def _skipped(self, tp: TP, start: int, end: int, timestamp: int) -> None:
        """Report the records at offsets ``start`` to ``end - 1`` of ``tp``, which no worker read (``timestamp``:
        the next record's, in ms)."""
        if tp.topic not in self.batch_topics:
            return
        log.error(
            "%d record(s) of %s[%d] at offsets %d-%d " + RECORDS_GONE + " (expired by the topic's "
            "retention, or deleted): their events were acknowledged to Stripe and never processed. They were "
            "published before %s: resend the events of that time from Stripe (Dashboard, or `stripe events resend`)",
            end - start,
            tp.topic,
            tp.partition,
            start,
            end - 1,
            datetime.fromtimestamp(timestamp / 1000, UTC).isoformat(timespec="seconds"),
        )
        if self.skip_sink is not None:
            self.skip_sink(tp.topic, end - start)

    def _log_behind_commit(self, tp: TP, offset: int, read_offset: int) -> None:
        """A record below the offset read up to: the partition's log was truncated (an unclean leader election) or
        recreated, and Kafka's consumer started again from its first record. Those records were never read:
        process them (events applied before are duplicates or stale), from a new commit base (what was finished
        above it was the old log's), and let commits go below the old offset (Faust's rule commits only above it).
        """
        log.error(
            "%s[%d] starts again at offset %d, below offset %d read or committed: " + LOG_BEHIND + ". Reading it "
            "from there (events applied before count as duplicates)",
            tp.topic,
            tp.partition,
            offset,
            read_offset,
        )
        self._committed_offset[tp] = None
        self._commit_bases.pop(tp, None)  # _follow takes this record as the base
        self._acked[tp].clear()
        self._acked_index[tp].clear()
        self._gap[tp].clear()


async def fetched_high_watermarks(
    options: dict[str, Any], partitions: Iterable[TP], near: Mapping[TP, int], patience: float = 10.0
) -> dict[TP, int]:
    """High watermarks from one fetch per partition, starting just before the offsets in ``near``."""
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp in partitions}
    consumer = PlainConsumer(**options, group_id=None, enable_auto_commit=False)
    found: dict[TP, int] = {}
    try:
        await consumer.start()  # in the try: a start that fails must close what it opened too
        consumer.assign(list(wanted))
        for aio_tp, tp in wanted.items():
            consumer.seek(aio_tp, max((near.get(tp) or 0) - 1, 0))
        deadline = time.monotonic() + patience
        while len(found) < len(wanted) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
            for aio_tp, tp in wanted.items():
                watermark = consumer.highwater(aio_tp)
                if watermark is not None:
                    found[tp] = watermark
    finally:
        await consumer.stop()
    return found
