"""librdkafka's producer (confluent-kafka) bridged to asyncio.

``produce`` is one C call on the event loop; batching, compression and the network happen in librdkafka's own
threads, off the event loop and outside the GIL. Delivery reports are served on the event loop itself, by a timer:
every millisecond while records await their report, every 100 ms otherwise (statistics and error callbacks). A
poller thread, as before, took the GIL once per report from a loop that was busy serving requests, and the gateway
carried about a quarter fewer requests per second (bench/README.md). Measured against aiokafka's producer: see
bench/README.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import confluent_kafka

from ops.settings import Settings

log = logging.getLogger(__name__)

#: Seconds between polls for delivery reports while records await theirs, and otherwise.
_BUSY_POLL = 0.001
_IDLE_POLL = 0.1


class DeliveryFailed(Exception):
    """The broker did not store the record (librdkafka's error says why)."""


class TopicRefused(DeliveryFailed):
    """The broker refused the record's topic (unknown, not authorised for this user, invalid): a fault of that topic,
    not of the broker, whose other topics take records."""


#: librdkafka's errors that concern the record's topic alone.
_TOPIC_ERRORS = frozenset(
    {
        confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
        confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
        confluent_kafka.KafkaError._UNKNOWN_TOPIC,
        confluent_kafka.KafkaError.TOPIC_EXCEPTION,
    }
)


class RecordTooLarge(Exception):
    """The record is over the size limit (``KAFKA_MAX_MESSAGE_BYTES``, or the broker's own): the record's fault,
    not the broker's, and sending it again cannot succeed."""


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings from the same variables as every other client (acks=all, murmur2 like Java)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol.lower(),
        "acks": "all",
        "enable.idempotence": settings.kafka_enable_idempotence,
        "linger.ms": settings.producer_linger_ms,
        "batch.size": min(settings.producer_max_batch_size, settings.kafka_max_message_bytes),
        # Stripe's JSON shrinks several times with lz4 (13x for the fixtures' events, tests/test_publishing.py):
        # brokers store, replicate and serve a fraction of the bytes, and the workers' consumer thread reads and
        # checksums a fraction (bench/README.md, fifth round); it runs in librdkafka's threads, not on the loop
        "compression.type": settings.producer_compression,
        # A batch goes out once it holds this many records, without waiting out linger.ms: under load the batches
        # fill at once and the wait only added latency, which on a fixed number of connections caps throughput
        # (bench/README.md, "Gateway, second round"). 16 Stripe events of usual size are far from
        # filling a 1 MiB batch by bytes.
        "batch.num.messages": settings.producer_batch_records,
        # refuses at once a record larger than the brokers accept (RecordTooLarge) rather than sending it
        "message.max.bytes": settings.kafka_max_message_bytes,
        "message.timeout.ms": settings.gateway_publish_timeout_ms,
        "partitioner": "murmur2_random",  # Kafka's default partitioner: every client routes an id alike
        # Topics are created by hookstream, with TOPIC_PARTITIONS partitions and its topic configs
        # (ops/kafka.py): never by the brokers' auto-creation, with their defaults, when librdkafka asks for the
        # metadata of a topic that is gone (the readiness probe, a record to a deleted topic). The producer's
        # default is true.
        "allow.auto.create.topics": False,
        "socket.keepalive.enable": True,
        "log_level": 4,  # warnings and worse
    }
    if settings.kafka_sasl:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = settings.kafka_ssl_cafile
    if settings.kafka_ssl_certfile is not None:  # mutual TLS (the key comes with it: ops/settings.py)
        config["ssl.certificate.location"] = settings.kafka_ssl_certfile
        config["ssl.key.location"] = settings.kafka_ssl_keyfile
        if settings.kafka_ssl_key_password:
            config["ssl.key.password"] = settings.kafka_ssl_key_password
    return config


class AsyncProducer:
    """One librdkafka producer for the process; ``send`` returns a future resolved by the delivery report."""

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: librdkafka's fatal error, if it had one: the producer refuses every record from then on (the idempotent
        #: producer's unresolvable sequence gap, a missing IdempotentWrite ACL), and only a new one can publish
        self.fatal_error: str | None = None
        # its log lines go through Python's logging (ops/logs.py: one format, repeats held back), served by poll()
        self._producer: confluent_kafka.Producer | None = confluent_kafka.Producer(  # None once closed
            config, logger=logging.getLogger("librdkafka")
        )
        self._reports: list[tuple[asyncio.Future[None], Any]] = []
        self._awaiting = 0  # records sent whose report has not been handed over
        self._timer: asyncio.TimerHandle | None = loop.call_later(_IDLE_POLL, self._poll)

    def send(
        self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        """Queue one record; raises BufferError when librdkafka's queue is full (the broker is not keeping up),
        RecordTooLarge or DeliveryFailed when librdkafka refuses it or the producer is closed."""
        # self._producer, not a local: a frame kept by a logged traceback must not keep librdkafka alive (close)
        if self._producer is None:
            raise DeliveryFailed("the producer is closed")
        future: asyncio.Future[None] = self._loop.create_future()
        try:
            self._producer.produce(
                topic,
                value,
                key,
                headers=cast(Any, headers),
                on_delivery=lambda err, msg: self._reports.append((future, err)),
            )
        except confluent_kafka.KafkaException as exc:
            self._check_fatal(exc.args[0])
            raise _failure(exc.args[0]) from exc
        self._awaiting += 1
        if self._awaiting == 1 and self._timer is not None:  # was idle: the first report is due within ms
            self._timer.cancel()
            self._timer = self._loop.call_later(_BUSY_POLL, self._poll)
        return future

    def _poll(self) -> None:
        """Serve the callbacks that are due (without blocking), resolve their futures, and poll again."""
        if self._producer is None:  # closed (its timer was cancelled: not reached)
            return
        try:
            self._producer.poll(0)  # not through a local: see send
            self._hand_over()
        except confluent_kafka.KafkaException as exc:  # a fatal error is raised here once; reports still come
            self._check_fatal(exc.args[0])
            if self.fatal_error is None:
                log.exception("serving librdkafka's callbacks failed")
        except Exception:  # never stop polling: every later publish would wait for a report forever
            log.exception("serving librdkafka's callbacks failed")
        finally:
            self._timer = self._loop.call_later(_BUSY_POLL if self._awaiting else _IDLE_POLL, self._poll)

    def _serve(self, producer: confluent_kafka.Producer) -> None:
        """Serve the callbacks that are due. librdkafka raises a fatal error once, from whichever call serves it
        first (raised from a flush, a second flush failed inside confluent-kafka): note it and serve the rest."""
        for _ in range(2):
            try:
                producer.poll(0)
                return
            except confluent_kafka.KafkaException as exc:
                self._check_fatal(exc.args[0])

    def _check_fatal(self, error: confluent_kafka.KafkaError) -> None:
        """Note a fatal error (``poll`` raises it once; ``produce`` refuses every record after it, with ``_FATAL``):
        the owner has to replace this producer."""
        if (error.fatal() or error.code() == confluent_kafka.KafkaError._FATAL) and self.fatal_error is None:
            self.fatal_error = str(error)
            log.error("the Kafka producer failed for good: %s", error)

    def _hand_over(self) -> None:
        if self._reports:
            reports, self._reports = self._reports, []
            self._awaiting -= len(reports)
            _resolve(reports)

    async def close(self, flush_seconds: float = 10.0) -> int:
        """Stop polling, deliver what is queued (up to ``flush_seconds``), and let librdkafka go (its threads end);
        return the records left undelivered. A send after it fails with DeliveryFailed (the gateway answers 503)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # librdkafka's threads live as long as the handle, and whatever still refers to this object (a logged
        # traceback of _poll does) would otherwise keep them reconnecting to brokers long gone
        producer, self._producer = self._producer, None
        if producer is None:
            return 0
        self._serve(producer)  # a fatal error not served yet is met here, not in the flush
        # flush serves the remaining delivery callbacks on its thread; nothing else touches the reports meanwhile
        try:
            remaining: int = await asyncio.to_thread(producer.flush, flush_seconds)
        except confluent_kafka.KafkaException as exc:  # one that came meanwhile
            self._check_fatal(exc.args[0])
            remaining = len(producer)
        if remaining:  # whatever is left fails now (its senders get a 503) instead of waiting on a closed producer
            producer.purge()
            self._serve(producer)
        del producer  # let go: the handle is destroyed once the flush's thread lets go too (under a millisecond)
        self._hand_over()
        return remaining

    def cluster_answers(self, timeout: float, topic: str | None = None) -> bool:
        """Blocking metadata round trip: True when a broker answered. With ``topic`` (one the gateway knows exists),
        the metadata of that topic alone: every topic's, on a shared cluster with thousands, is a large answer
        that confluent-kafka turns into Python objects holding the GIL, and the gateway's event loop waits."""
        producer = self._producer
        if producer is None:
            return False
        try:
            producer.list_topics(topic, timeout=timeout)
            return True
        except confluent_kafka.KafkaException:
            return False


def _resolve(reports: list[tuple[asyncio.Future[None], Any]]) -> None:
    for future, error in reports:
        if future.done():  # the request gave up already (deadline); the record was stored anyway or not
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(_failure(error))


def _failure(error: confluent_kafka.KafkaError) -> DeliveryFailed | RecordTooLarge:
    if error.code() == confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE:  # refused by librdkafka or by the broker
        return RecordTooLarge(str(error))
    if error.code() in _TOPIC_ERRORS:
        return TopicRefused(str(error))
    return DeliveryFailed(str(error))
