"""What happens to one event: decode, filter duplicates and stale deliveries (a stale one still runs a handler
registered with ``include_stale=True``), run its handler with retries, store the new state, dead-letter what cannot
be applied. Every failure of the event's own ends here as a dead letter (an exception that reached Faust would ack
and drop the event); only a failing store raises (StateNotStored), and the caller leaves that record
unacknowledged."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from aiokafka.errors import KafkaError, KafkaTimeoutError

from ops.logs import described, stack
from streams import eager
from streams.dead_letters import (
    HEADERS_OMITTED,
    REPLAYED_AT,
    VALUE_OMITTED,
    dead_letter_headers,
    header,
    header_pairs,
)
from streams.deadlines import Deadlines
from streams.events import BadRecord, StripeEvent, decode_event, object_field
from streams.metrics import WorkerMetrics
from streams.registry import Context, Emitted, HandlerRegistry, Registration
from streams.state import (
    ObjectState,
    Outcome,
    StateInvalid,
    StateTooLarge,
    decode_state,
    encode_state,
    judge,
    new_state,
    record_applied,
    start_applying,
)

log = logging.getLogger(__name__)

#: What of the event msgspec's reasons can quote: a string value (Python's repr: single quotes, or double when it
#: holds one), a number after "value" (an int Literal, IntEnum or tag), an unknown field's name
_EVENT_TEXT = re.compile(
    r"'(?:[^'\\]|\\.)*'" + r'|"(?:[^"\\]|\\.)*"' + r"|(?<=value )-?[0-9][0-9.e+-]*|(?<=unknown field )`[^`]*`"
)

#: Room for a record's framing in a produce request (aiokafka's estimate stays well within it).
_RECORD_OVERHEAD = 512


class Record(Protocol):
    """The parts of a consumed Kafka record the processor reads (a Faust Message has them)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


Send = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[None]]


class StateStore(Protocol):
    """Where object states live: the objects table (``streams/table.py``), or a dict in tests."""

    def get(self, key: bytes) -> bytes | None: ...

    def check(self, key: bytes, value: bytes) -> None:
        """Raise StateTooLarge if ``value`` cannot be stored."""

    async def put(self, key: bytes, value: bytes, partition: int) -> None: ...


class EmitTooLarge(ValueError):
    """A record the handler emitted is over the brokers' record size limit: the event is dead-lettered."""


class EmitRefused(Exception):
    """The brokers refuse a record the handler emitted for good: the event is dead-lettered."""


class HandlerCancelled(Exception):
    """A handler attempt ended in CancelledError that neither its deadline nor the worker caused."""


class NoLongerOurs(Exception):
    """The record's partition went to another worker (a rebalance) while its handler ran on: an actor left behind,
    its handler having swallowed the worker's cancellation. Nothing of it may be emitted or stored here: the new
    owner processes the record, from its own state. Not acknowledged either."""


class StateNotStored(Exception):
    """The store refused or failed a write (a changelog batch lost, the producer stopped, the disk). Not the
    event's fault: it is not dead-lettered, and it must stay unacknowledged, nothing later of its object may run,
    and the worker stops (streams/app.py): it is processed again after the restart."""


class RetryPolicy:
    def __init__(self, max_attempts: int, backoff: float, max_backoff: float, timeout: float) -> None:
        self.max_attempts, self.backoff, self.max_backoff, self.timeout = max_attempts, backoff, max_backoff, timeout

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))


class EventProcessor:
    """Applies records to the object states in ``store``."""

    def __init__(
        self,
        registry: HandlerRegistry,
        store: StateStore,
        send: Send,
        dlq_topic: str,
        retry: RetryPolicy,
        metrics: WorkerMetrics,
        max_value_bytes: int,
        max_record_bytes: int,
        topic_prefix: str,
        ours: Callable[[Record], bool] | None = None,
    ) -> None:
        self._registry = registry
        self._topic_prefix = topic_prefix  # a record's topic is the prefix and the kind of object it carries
        self._ours = ours  # whether a record's partition is still this worker's (None: always)
        self._store = store
        self._send = send
        self._dlq_topic = dlq_topic
        self._retry = retry
        self._metrics = metrics
        self._max_value_bytes = max_value_bytes  # larger values are not events (the gateway publishes none)
        # what the brokers take: of a dead letter, or of a record a handler emits
        self._max_record_bytes = max_record_bytes
        self._deadlines = Deadlines(retry.timeout)

    async def process(self, record: Record) -> Outcome:
        """Finish ``record`` one way or another and say how; StateNotStored if the store failed it (the record must
        then stay unacknowledged)."""
        headers = _headers(record)
        event_type = (header(headers, "event-type") or b"unknown").decode(errors="replace")
        try:
            outcome, event_type = await self._process(record, headers, event_type)
        except (asyncio.CancelledError, StateNotStored, NoLongerOurs):
            raise
        except Exception as exc:  # a bug of ours, not a handler's: still never lose the record
            log.error(
                "error processing %s[%d]@%d, dead-lettered: %s\n%s",
                record.topic,
                record.partition,
                record.offset,
                described(exc),
                stack(exc),
            )
            await self._dead_letter(record, headers, exc, 0)
            outcome = Outcome.DEAD_LETTERED
        self._metrics.processed_counter(record.topic, event_type, outcome).inc()
        published_at = _published_at(headers)
        if published_at and published_at.isdigit():  # not every producer is the gateway: a bad header costs a sample
            latency = time.time() - int(published_at) / 1000
            self._metrics.end_to_end_seconds.labels(record.topic).observe(max(latency, 0.0))
        return outcome

    async def _process(self, record: Record, headers: list[tuple[str, bytes]], event_type: str) -> tuple[Outcome, str]:
        try:
            event, registration = self._decode(record.value, event_type, record.topic.removeprefix(self._topic_prefix))
        except BadRecord as exc:
            log.warning(
                "record %s[%d]@%d (%s) dead-lettered: %s",
                record.topic,
                record.partition,
                record.offset,
                event_type,
                _EVENT_TEXT.sub("...", str(exc)),  # msgspec may quote the event: no body in the logs
            )
            await self._dead_letter(record, headers, exc, 0)
            return Outcome.DEAD_LETTERED, event_type
        if registration is None:
            return Outcome.UNHANDLED, event.type
        object_id = record.key or str(object_field(event.object, "id") or event.id).encode()
        stored = self._store.get(object_id)
        state = decode_state(stored) if stored is not None else None
        verdict = judge(state, event) if state is not None else None
        if verdict is Outcome.STALE and registration.include_stale:  # its handler runs; the newer state stays
            outcome = await self._apply(record, headers, event, registration, object_id, stored, state, stale=True)
            return (verdict if outcome is Outcome.OK else outcome), event.type
        if verdict is not None:
            return verdict, event.type
        return await self._apply(record, headers, event, registration, object_id, stored, state), event.type

    def _decode(
        self, value: bytes | None, header_type: str, object_type: str
    ) -> tuple[StripeEvent[Any], Registration | None]:
        """The event and its handler, the one for its type and for the ``object_type`` its topic carries. The
        record's event-type header (the gateway's) picks the handler, and so what the object is decoded into, before
        decoding; the event's own type decides if the two differ (a record that did not come through the gateway).
        BadRecord if it is not an event, or its object does not fit its own handler's model."""
        registration = self._registry.lookup(header_type, object_type)
        model = decoded_as = registration.model if registration is not None else None
        try:
            event = decode_event(value, self._max_value_bytes, model)
        except BadRecord:
            if model is None:
                raise
            event, decoded_as = decode_event(value, self._max_value_bytes), None  # to learn its own type
            if event.type == header_type:
                raise  # its own handler's model does not fit it
        if event.type != header_type:
            registration = self._registry.lookup(event.type, object_type)
            wanted = registration.model if registration is not None else None
            if wanted is not decoded_as:  # decoded into something else than its own handler reads
                event = decode_event(value, self._max_value_bytes, wanted)
        return event, registration

    async def _apply(
        self,
        record: Record,
        headers: list[tuple[str, bytes]],
        event: StripeEvent,
        registration: Registration,
        object_id: bytes,
        stored: bytes | None,
        decoded: ObjectState | None,
        stale: bool = False,
    ) -> Outcome:
        retry = self._retry
        for attempt in range(1, retry.max_attempts + 1):
            # each attempt starts from the stored state (the first reuses the copy decoded to judge the event;
            # a retry decodes afresh): a failed attempt leaves nothing behind
            if attempt == 1 and decoded is not None:
                state = decoded
            elif stored is not None:
                state = decode_state(stored)
            else:
                state = new_state(object_id.decode(errors="replace"), event, registration.object_type)
            context = Context(state, attempt, stale=stale)
            if stale:
                newer_status = state.status  # put back after the handler: a stale event never sets it
            else:
                start_applying(state, event)
            started = time.perf_counter()
            failure: Exception | None = None
            timed_out = False  # the deadline cancelled the attempt, and nothing else did
            try:
                _, result = eager.start(registration.handler(event, context))
                if isinstance(result, eager.Resume):  # the handler waits (I/O): only then does it need a deadline
                    rest = result
                    self._deadlines.watch(rest)
                    try:
                        result = await rest  # type: ignore[func-returns-value]  # typed None: checked below
                    finally:
                        timed_out = self._deadlines.forget(rest)
                if result is not None:
                    raise _returned(result)
            except asyncio.CancelledError:
                if not timed_out and _cancelled_from_outside():
                    raise  # the worker stops: the event stays unacknowledged
                # the deadline, or something the handler awaited was cancelled (a future shared with a handler
                # that timed out): a failed attempt like any other, never an escape that would end the actor
                failure = (
                    TimeoutError(f"the handler took longer than {retry.timeout:g}s")
                    if timed_out
                    else HandlerCancelled("something the handler awaited was cancelled")
                )
            except Exception as exc:
                failure = exc
            self._metrics.handler_seconds.labels(event.type).observe(time.perf_counter() - started)
            if failure is not None:
                if attempt == retry.max_attempts:
                    log.warning(
                        "event %s (%s) failed %d times, dead-lettered: %s",
                        event.id,
                        event.type,
                        attempt,
                        described(failure),
                    )
                    await self._dead_letter(record, headers, failure, attempt)
                    return Outcome.DEAD_LETTERED
                # the partition given up (a rebalance, the worker stopping): the new owner runs the event. Its handler
                # may have turned the cancellation into an error of its own (a client library does), and the task's
                # cancel count cannot tell (3.11's TaskGroup leaves it raised after a child failed). Before the
                # backoff (a long one would outlast the stop's patience) and after it (given up meanwhile).
                self._check_ours(record, event)
                self._metrics.processed_counter(record.topic, event.type, Outcome.RETRIED).inc()
                await asyncio.sleep(retry.delay(attempt))
                self._check_ours(record, event)
                continue
            if stale:  # not applied: the newer event stays the last one, its status the object's
                state.status = newer_status
            else:
                record_applied(state, event)
            try:
                encoded = encode_state(state, checked=True)
                self._store.check(object_id, encoded)
                self._check_emitted(context.emitted)
            except (StateTooLarge, StateInvalid, EmitTooLarge) as exc:  # no attempt changes what the handler made
                log.error("event %s (%s) dead-lettered, nothing emitted: %s", event.id, event.type, exc)
                await self._dead_letter(record, headers, exc, attempt)
                return Outcome.DEAD_LETTERED
            self._check_ours(record, event)  # a handler that swallowed the worker's cancellation returns here
            # what the handler emitted goes first: stopped or killed before the state is stored, the event is
            # applied again (and emits again: at least once); stored first, it would be a duplicate next time and
            # its records lost
            for emitted in context.emitted:
                try:
                    await self._send_durably(emitted.topic, emitted.key, emitted.value, [], give_up=True)
                except EmitRefused as exc:  # records emitted before it stay sent: at least once, as on a replay
                    log.error("event %s (%s) dead-lettered: %s", event.id, event.type, exc)
                    await self._dead_letter(record, headers, exc, attempt)
                    return Outcome.DEAD_LETTERED
            if stale and encoded == stored:  # a stale run that changed nothing (most do): no changelog record
                return Outcome.OK
            try:
                await self._store.put(object_id, encoded, record.partition)
            except Exception as exc:
                raise StateNotStored(f"state of {event.id} ({event.type}) not stored: {described(exc)}") from exc
            return Outcome.OK
        raise AssertionError("unreachable")

    def _check_ours(self, record: Record, event: StripeEvent | None = None) -> None:
        """NoLongerOurs unless ``record`` is still this worker's (``event``: what it is, for the message)."""
        if self._ours is not None and not self._ours(record):
            what = f"{event.id} ({event.type})" if event is not None else "its dead letter"
            raise NoLongerOurs(
                f"{what}, of {record.topic}[{record.partition}]@{record.offset}: its partition went to another worker "
                "(or the worker stops) while it ran"
            )

    def _check_emitted(self, emitted: list[Emitted]) -> None:
        """EmitTooLarge if a record is over what the brokers take: the producer would refuse it at every try, and
        the event, sent after its emits, would wait for ever."""
        for record in emitted:
            size = _record_size(record.key, record.value, ())
            if size > self._max_record_bytes:
                raise EmitTooLarge(
                    f"a record emitted to {record.topic} is {size} bytes, over the {self._max_record_bytes}-byte "
                    "limit of a record"
                )

    async def _dead_letter(
        self, record: Record, headers: list[tuple[str, bytes]], error: BaseException, attempts: int
    ) -> None:
        self._check_ours(record)  # the new owner runs it: a dead letter here would be a spurious one
        dlq_headers = dead_letter_headers(headers, error, attempts, record.topic, record.partition, record.offset)
        value = record.value or b""
        # over the producer's or brokers' limit: stored without the value, the source offset points to it; and
        # without the original headers if they alone are over it (a record that bypassed the gateway), or the dead
        # letter, retried for ever, would hold its object and its partition's commits
        if _record_size(record.key, value, dlq_headers) > self._max_record_bytes:
            omitted = (VALUE_OMITTED, b"%d" % len(value))
            value = b""
            dlq_headers.append(omitted)
            if _record_size(record.key, value, dlq_headers) > self._max_record_bytes:
                identity = [(k, v) for k, v in headers if k in _IDENTITY_HEADERS and len(v) <= _MAX_IDENTITY_BYTES]
                own = dead_letter_headers(identity, error, attempts, record.topic, record.partition, record.offset)
                original = _record_size(None, b"", headers) - _RECORD_OVERHEAD
                dlq_headers = [*own, omitted, (HEADERS_OMITTED, b"%d" % original)]
        await self._send_durably(self._dlq_topic, record.key, value, dlq_headers)

    async def _send_durably(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], give_up: bool = False
    ) -> None:
        """Send until the broker acknowledges: the event is not acked before what it produced is stored. With
        ``give_up``, EmitRefused when the brokers refuse the record for good (no ACL for the topic, an invalid
        topic): retried, it would hold its object and the partition's commits for ever. A dead letter has nowhere
        else to go: it is retried whatever the error."""
        delay = 0.5
        while True:
            try:
                await self._send(topic, key, value, headers)
                return
            except Exception as exc:
                if give_up and _refused_for_good(exc):
                    raise EmitRefused(f"the brokers refuse records for {topic}: {described(exc)}") from exc
                log.warning("cannot write to %s (%s); retrying in %.1fs", topic, _why_not_sent(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


#: Original headers a dead letter keeps when the others go (``headers-omitted``): ``hookstream replay --list``
#: shows them, and ``--discard`` finds an event by its id.
_IDENTITY_HEADERS = frozenset({"event-id", "event-type"})
_MAX_IDENTITY_BYTES = 256


def _record_size(key: bytes | None, value: bytes, headers: Iterable[tuple[str, bytes]]) -> int:
    """What a record takes of a produce request's limit, framing included."""
    return len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers) + _RECORD_OVERHEAD


def _refused_for_good(error: Exception) -> bool:
    """Kafka says retrying cannot help. Except a timeout: aiokafka raises one (not retriable) for a topic whose
    metadata did not come in time, which is also what a broker outage looks like."""
    return isinstance(error, KafkaError) and not error.retriable and not isinstance(error, KafkaTimeoutError)


def _why_not_sent(error: Exception) -> str:
    if isinstance(error, KafkaTimeoutError):  # for the topic's metadata, or the record's acknowledgement
        return (
            f"{error!r}: the topic does not exist and the brokers do not create topics, or the brokers are away or "
            "slow; nothing after this event is committed until it goes"
        )
    return repr(error)


def _returned(result: object) -> TypeError:
    """A handler returns None: anything else is a mistake, and a coroutine a missing ``await`` (never run)."""
    if asyncio.iscoroutine(result):
        result.close()  # no "never awaited" warning on top of this error
        return TypeError("the handler returned a coroutine instead of awaiting it (a missing await?)")
    return TypeError(f"the handler returned {type(result).__name__}; handlers return None")


def _cancelled_from_outside() -> bool:
    """True if the current task is being cancelled (shutdown, rebalance): that cancellation must go on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _published_at(headers: list[tuple[str, bytes]]) -> bytes | None:
    """When the event entered Kafka: its replay's time for a replayed event, else the gateway's (one pass)."""
    received_at = None
    for key, value in headers:
        if key == REPLAYED_AT:
            return value
        if key == "received-at":
            received_at = value
    return received_at


def _headers(record: Record) -> list[tuple[str, bytes]]:
    # a header without a value would make sizing and writing its dead letter raise: the record acked unprocessed
    return header_pairs(record.headers)
