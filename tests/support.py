"""Helpers for tests that run real processes: gateways, HTTP calls, Kafka reads and metric scrapes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from gateway.envelope import Record, to_record
from gateway.signature import sign
from ops.broker import EmbeddedBroker
from ops.dev import EMBEDDED_BROKER_ENV
from ops.fixtures import build_event, encode
from ops.kafka import create_topics
from ops.process import free_port, stop_process
from ops.settings import DEV_WEBHOOK_SECRET, Settings
from streams.metrics import WorkerMetrics
from streams.processor import EventProcessor, RetryPolicy, Send, StateStore
from streams.registry import HandlerRegistry
from streams.state import StateTooLarge

SECRET = DEV_WEBHOOK_SECRET
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEBHOOK = "/webhooks/stripe"


@dataclass
class BrokerInfo:
    bootstrap_servers: str
    enable_idempotence: bool
    embedded: EmbeddedBroker | None = None

    @property
    def is_embedded(self) -> bool:
        """The embedded broker, started here or given (KAFKA_BOOTSTRAP_SERVERS with KAFKA_ENABLE_IDEMPOTENCE=false):
        it takes no idempotent producer."""
        return self.embedded is not None or not self.enable_idempotence

    def app_env(self, app_id: str, prefix: str) -> dict[str, str]:
        """``env()`` for the components of one app (consumer groups, changelog) on one topic prefix."""
        return self.env() | {"HOOKSTREAM_APP_ID": app_id, "TOPIC_PREFIX": prefix}

    def env(self) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": "true" if self.enable_idempotence else "false",
            # short group timeouts: workers join, and notice a killed peer, in seconds
            "WORKER_REBALANCE_TIMEOUT": "3",
            "WORKER_SESSION_TIMEOUT": "6",
        }
        if self.is_embedded:  # DESIGN.md: one record per changelog batch
            env |= EMBEDDED_BROKER_ENV
        return env


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Any = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        return http_request(self.port, method, path, body, headers, timeout)

    def post_event(self, body: bytes, secret: str = SECRET, timeout: float = 30.0) -> Response:
        return self.request("POST", WEBHOOK, body, {"Stripe-Signature": sign(body, secret)}, timeout)

    def metric(self, name: str, **labels: str) -> float:
        """Current value of one sample on /metrics (0 when absent)."""
        return metric_value(self.request("GET", "/metrics").body.decode(), name, labels)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))

    def wait_until(self, path: str, status: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: int | str = "no answer"
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                last = self.request("GET", path, timeout=2).status
                if last == status:
                    return
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited ({self.process.returncode}):\n{self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"GET {path} never answered {status} (last: {last}):\n{self.output()[-3000:]}")


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


@contextlib.contextmanager
def start_gateway(broker: BrokerInfo | None, wait_ready: bool = True, **env: str) -> Iterator[GatewayProcess]:
    """Run ``hookstream gateway`` on a free port; stop it (by PID) afterwards."""
    port = free_port()
    environ = {
        **os.environ,
        **(broker.env() if broker else {}),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "LOG_LEVEL": "INFO",
        **env,
    }
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "gateway"], env=environ, stdout=log, stderr=subprocess.STDOUT
    )
    gateway = GatewayProcess(port, process, log)
    try:
        gateway.wait_until("/readyz" if wait_ready else "/healthz", 200)
        yield gateway
    finally:
        stop_process(process, timeout=20)
        log.close()


def metric_value(text: str, name: str, labels: dict[str, str]) -> float:
    """Parse a sample from Prometheus text exposition; 0.0 when that series does not exist yet."""
    samples = metric_samples(text, name, labels)
    return float(samples[0][1]) if samples else 0.0


def metric_samples(text: str, name: str, labels: dict[str, str]) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``name`` in Prometheus text exposition whose labels include ``labels``, with all its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]


def consume(
    bootstrap: str, topics: list[str], expected: int, timeout: float = 30.0, settle: float = 1.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read every partition of ``topics`` from the beginning until ``expected`` records (then ``settle`` s more,
    to catch extras) or the timeout."""

    async def run() -> list[ConsumerRecord[bytes, bytes]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()  # loads cluster metadata without creating anything
            partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or set())]
            consumer.assign(partitions)
            await consumer.seek_to_beginning()
            records: list[ConsumerRecord[bytes, bytes]] = []
            deadline = time.monotonic() + timeout
            settle_until: float | None = None
            while time.monotonic() < deadline:
                if settle_until is None and len(records) >= expected:
                    settle_until = time.monotonic() + settle
                if settle_until is not None and time.monotonic() >= settle_until:
                    break
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    records.extend(messages)
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


def partition_count(bootstrap: str, topic: str) -> int:
    async def run() -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()
            return len(consumer.partitions_for_topic(topic) or ())
        finally:
            await consumer.stop()

    return asyncio.run(run())


@dataclass
class WorkerProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Any = field(repr=False)

    def request(self, path: str, timeout: float = 30.0) -> Response:
        return http_request(self.port, "GET", path, timeout=timeout)

    def state(self, object_id: str, patience: float = 60.0) -> dict[str, Any] | None:
        """The object's state, None for an unknown id; a 503 (a worker joining, rebalancing or recovering, or the
        owner not answering) is asked again every 0.2 s for ``patience`` seconds."""
        deadline = time.monotonic() + patience
        response = self.request(f"/objects/{object_id}")
        while response.status == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
            response = self.request(f"/objects/{object_id}")
        if response.status == 404:
            return None
        assert response.status == 200, (response.status, response.body)
        return dict(response.json())

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.request("/metrics").body.decode(), name, labels)

    def metric_sum(self, name: str, **labels: str) -> float:
        """Sum of every sample of ``name`` whose labels include ``labels``."""
        return sum(value for _, value in self.metric_samples(name, **labels))

    def metric_samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return metric_samples(self.request("/metrics").body.decode(), name, labels)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited ({self.process.returncode}):\n{self.output()[-5000:]}")
            with contextlib.suppress(OSError):
                if self.request("/readyz", timeout=2).status == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"worker never became ready:\n{self.output()[-5000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.process, timeout=30, sig=sig)


@contextlib.contextmanager
def start_worker(
    broker: BrokerInfo, app_id: str, prefix: str, wait_ready: bool = True, **env: str
) -> Iterator[WorkerProcess]:
    """Run ``hookstream worker`` with the recording test handlers on a free web port, its data directory a
    temporary one unless ``WORKER_DATA_DIR`` is given; stop it by PID."""
    port = free_port()
    data_dir = tempfile.TemporaryDirectory(prefix=f"{app_id}-")
    environ = {
        **os.environ,
        **broker.app_env(app_id, prefix),
        "PYTHONPATH": REPO,
        "HOOKSTREAM_HANDLERS": "tests.handlers.recording",
        "WORKER_WEB_PORT": str(port),
        "WORKER_WEB_HOST": "127.0.0.1",
        "WORKER_LAG_INTERVAL": "0.5",
        "LOG_LEVEL": "WARNING",
        "WORKER_DATA_DIR": data_dir.name,
        **env,
    }
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "worker"], env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
    )
    worker = WorkerProcess(port, process, log)
    try:
        if wait_ready:
            worker.wait_ready()
        yield worker
    finally:
        stop_process(process, timeout=30)
        log.close()
        data_dir.cleanup()


def hookstream(
    broker: BrokerInfo, app_id: str, prefix: str, *args: str, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``hookstream <args>`` as an operator would run it, for the workers of ``app_id`` on ``prefix``'s topics (with
    the recording test handlers, unless ``env`` says otherwise); the finished process, its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env={
            **os.environ,
            **broker.app_env(app_id, prefix),
            "PYTHONPATH": REPO,
            "HOOKSTREAM_HANDLERS": "tests.handlers.recording",
            **(env or {}),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def produce(
    bootstrap: str, records: list[Record], enable_idempotence: bool = False, max_request_size: int = 1 << 20
) -> None:
    """Publish gateway-format records in list order (so per-partition order is list order)."""

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)  # as the gateway would: TOPIC_PARTITIONS
        await admin.start()
        try:
            await create_topics(admin, Settings.from_env({}), sorted({r.topic for r in records}))
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            max_batch_size=1 << 20,
            max_request_size=max_request_size,
            enable_idempotence=enable_idempotence,
        )
        await producer.start()
        try:
            for r in records:
                await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent (Linux: /proc)."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (Linux: /proc)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def charge(
    prefix: str,
    object_id: str,
    seq: int,
    created: int,
    event_id: str | None = None,
    fail: bool = False,
    event_type: str = "charge.updated",
    hang: bool = False,
    stubborn: bool = False,
    emit: str | None = None,
) -> Record:
    """A charge event for tests/handlers/recording.py, with its flags (``emit``: the topic its handler emits to)."""
    flags = {"fail": fail, "hang": hang, "stubborn": stubborn}
    metadata = {"seq": str(seq)} | {flag: "true" for flag, on in flags.items() if on} | ({"emit": emit} if emit else {})
    event = build_event(
        event_type,
        object_id=object_id,
        event_id=event_id,
        created=created,
        object_fields={"metadata": metadata, "amount": 100 + seq},
    )
    return to_record(encode(event), prefix, int(time.time() * 1000))


def unique(name: str) -> tuple[str, str]:
    """A fresh app id (consumer group, changelog) and topic prefix per test."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    return f"hs-{tag}", f"t{tag}."


@dataclass
class ConsumedRecord:
    """A consumed record as the processor reads it (``streams.processor.Record``), for tests without a broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any

    @classmethod
    def of_event(cls, event_type: str, object_id: str, offset: int = 0, **event: Any) -> ConsumedRecord:
        """A realistic event of ``object_id``, as the gateway publishes it and a worker consumes it (``event``:
        more of ``build_event``'s arguments)."""
        record = to_record(encode(build_event(event_type, object_id=object_id, **event)), "stripe.", 0)
        return cls(record.topic, 0, offset, record.key, record.value, record.headers)


def recording_send(sent: list[tuple[str, dict[str, bytes]]]) -> Send:
    """The processor's ``send``, noting each record's topic and headers in ``sent`` (dead letters, emits)."""

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, dict(headers)))

    return send


def processor(
    handlers: HandlerRegistry,
    store: StateStore,
    send: Send,
    attempts: int = 1,
    backoff: float = 0.001,
    timeout: float = 1.0,
    metrics: WorkerMetrics | None = None,
    ours: Callable[[Any], bool] | None = None,
) -> EventProcessor:
    """The worker's processor for tests without a broker: event topics ``stripe.<object type>``, dead letters to
    ``stripe.dlq`` through ``send``, retries ``backoff`` seconds apart, records of up to 1 MiB; ``ours``: whether a
    record's partition is still the worker's (default: always)."""
    retry = RetryPolicy(attempts, backoff, backoff, timeout)
    metrics = metrics or WorkerMetrics()
    return EventProcessor(
        handlers,
        store,
        send,
        "stripe.dlq",
        retry,
        metrics,
        max_value_bytes=1 << 20,
        max_record_bytes=1 << 20,
        topic_prefix="stripe.",
        ours=ours,
    )


class DictStore(dict[bytes, bytes]):
    """Object states in a dict, with the table writer's ``check`` (its limit: ``max_value_bytes``) and ``put``."""

    max_value_bytes = 1 << 20

    def check(self, key: bytes, value: bytes) -> None:
        if len(key) + len(value) > self.max_value_bytes:
            raise StateTooLarge(f"state of {len(value)} bytes is over {self.max_value_bytes}")

    async def put(self, key: bytes, value: bytes, partition: int) -> None:
        self[key] = value  # as the table writer's: ``check`` comes first, from the processor


#: Kafka's ConfigSource of a config set on the topic itself (DescribeConfigs v1+), against the brokers' defaults.
DYNAMIC_TOPIC_CONFIG = 1


def topic_configs_set(
    broker: BrokerInfo, topics: list[str], name: str = "min.insync.replicas"
) -> dict[str, dict[str, str]]:
    """``name``'s value in each topic's config where it was set on the topic, not inherited from the brokers.

    Kafka lists every config of a topic and says where each value comes from; the embedded broker lists only those
    set on the topic (and calls them defaults): a listed one is set there."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    def set_on_topic(source: object) -> bool:
        return broker.is_embedded or source == DYNAMIC_TOPIC_CONFIG

    async def describe() -> dict[str, dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        finally:
            await admin.close()
        return {
            resource[3]: {entry[0]: entry[1] for entry in resource[4] if entry[0] == name and set_on_topic(entry[3])}
            for response in responses
            for resource in response.resources
        }

    return asyncio.run(describe())
