"""Shared plumbing for the benchmarks: child processes (CPU, RSS), HTTP and metric reads, events, publishing.

Every child runs in its own session (Ctrl-C reaches only the orchestrator, which stops them in order) and is
stopped by PID. Nothing here measures anything by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway.envelope import Record, to_record
from ops.fixtures import build_event, encode
from ops.process import stop_process
from ops.settings import Settings

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The signing secret every benchmarked gateway is started with.
SECRET = "whsec_hookstream_bench_secret"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    """A memory figure of ``pid`` in MiB from /proc/<pid>/status (``VmRSS`` now, ``VmHWM`` peak)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise LookupError(f"{key} not in /proc/{pid}/status")


@dataclass
class Child:
    """A child process started by the benchmark, with its output in a temporary file."""

    name: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] = field(repr=False)
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, tail: int = 4000) -> str:
        """The last ``tail`` characters the child printed."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-tail:]

    def check_alive(self) -> None:
        """Raise with the child's output if it has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.process.returncode}:\n{self.output()}")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET ``path`` on the child's port."""
        return http_get(self.port, path, timeout)


@contextlib.contextmanager
def child(name: str, command: Sequence[str], env: Mapping[str, str], port: int = 0) -> Iterator[Child]:
    """Run ``command`` from the repository root with ``env`` added; stop it by PID afterwards."""
    log = tempfile.TemporaryFile()
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    process = subprocess.Popen(
        list(command), env=environ, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield Child(name, process, log, port)
    finally:
        stop_process(process, timeout=30)
        log.close()


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One GET on loopback: status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def wait_until_ok(proc: Child, path: str, timeout: float = 90.0, interval: float = 0.05) -> float:
    """Poll ``GET path`` until it answers 200; return the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check_alive()
        with contextlib.suppress(OSError):
            if proc.get(path, timeout=2)[0] == 200:
                return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(f"{proc.name}: GET {path} never answered 200:\n{proc.output()}")


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def processed(worker: Child) -> dict[str, float]:
    """A hookstream worker's ``hookstream_events_processed_total`` by outcome."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = worker.get("/metrics")
    if status != 200:
        raise RuntimeError(f"{worker.name}: /metrics answered {status}")
    outcomes: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "hookstream_events_processed_total":
                outcome = sample.labels.get("outcome", "")
                outcomes[outcome] = outcomes.get(outcome, 0.0) + sample.value
    return outcomes


def finished(outcomes: Mapping[str, float]) -> float:
    """Events a worker is done with (every outcome but ``retried``, which is not final)."""
    return sum(v for k, v in outcomes.items() if k != "retried")


class EventFactory:
    """Fast Stripe events of one object type: one fixture-built template, ids and numbers substituted as bytes.

    ``build_event`` deep-copies a fixture per call; at 10^5-10^6 events that alone would take minutes.
    """

    _OBJ, _EVT, _TYPE, _SEQ, _CREATED = b"@@OBJ@@", b"@@EVT@@", b"@@TYPE@@", b"@@SEQ@@", b"1111111111"

    def __init__(self, event_type: str, size: int | None = None, compact: bool = False) -> None:
        """``size``: pad ``metadata`` so events are about this many bytes; ``compact``: a minimal object instead
        of the whole fixture (for the million-id memory run)."""
        if compact:
            event: dict[str, Any] = {
                "id": "@@EVT@@",
                "object": "event",
                "api_version": "2024-06-20",
                "created": 1111111111,
                "type": "@@TYPE@@",
                "livemode": False,
                "data": {
                    "object": {
                        "id": "@@OBJ@@",
                        "object": event_type.split(".")[0],
                        "amount": 1999,
                        "currency": "usd",
                        "status": "succeeded",
                        "metadata": {"seq": "@@SEQ@@"},
                    }
                },
            }
        else:
            event = build_event(event_type, object_id="@@OBJ@@", event_id="@@EVT@@", created=1111111111)
            event["type"] = "@@TYPE@@"
            event["data"]["object"]["metadata"] = {"seq": "@@SEQ@@"}
        body = encode(event)
        if size is not None and len(body) < size:
            event["data"]["object"]["metadata"]["padding"] = "x" * (size - len(body) - 40)
            body = encode(event)
        self.template = body

    def make(self, event_type: str, object_id: str, event_id: str, created: int, seq: int) -> bytes:
        """One event body."""
        return (
            self.template.replace(self._OBJ, object_id.encode())
            .replace(self._EVT, event_id.encode())
            .replace(self._TYPE, event_type.encode())
            .replace(self._SEQ, b"%d" % seq)
            .replace(self._CREATED, b"%d" % created)
        )


def gateway_body(size: int = 3072) -> bytes:
    """A realistic ~3 KB ``payment_intent.succeeded`` event (the gateway workload's request body)."""
    factory = EventFactory("payment_intent.succeeded", size=size)
    return factory.make("payment_intent.succeeded", "pi_bench_0001", "evt_bench_0001", int(time.time()), 0)


async def create_topics_async(bootstrap: str, topics: Sequence[str], partitions: int) -> None:
    """Create ``topics`` with ``partitions`` partitions (existing ones are left alone)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from ops.kafka import create_topics
    from ops.settings import Settings

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await create_topics(admin, Settings.from_env({"TOPIC_PARTITIONS": str(partitions)}), list(topics))
    finally:
        await admin.close()


def create_topics(bootstrap: str, topics: Sequence[str], partitions: int = 8) -> None:
    """Blocking :func:`create_topics_async`."""
    asyncio.run(create_topics_async(bootstrap, topics, partitions))


def publish(bootstrap: str, records: Iterator[Record], partitions: int = 8) -> int:
    """Publish gateway-format records in order (per-partition order = iteration order) with librdkafka,
    murmur2 like the gateway; return how many. Topics are created first from the first record's topic."""
    import confluent_kafka

    gateway = Settings()  # batches as the gateway's producer makes them by default: records per batch, codec
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": False,  # the embedded broker lacks it (DESIGN.md)
            "linger.ms": 5,
            "batch.size": 1 << 20,
            "batch.num.messages": gateway.producer_batch_records,
            "compression.type": gateway.producer_compression,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 200_000,
            "log_level": 4,
        }
    )
    failures: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    created: set[str] = set()
    for record in records:
        if record.topic not in created:
            create_topics(bootstrap, [record.topic], partitions)
            created.add(record.topic)
        while True:
            try:
                headers: Any = record.headers
                producer.produce(record.topic, record.value, record.key, headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise RuntimeError(f"publishing failed: {left} undelivered, errors: {failures[:3]}")
    return count


def charge_records(
    prefix: str, events: int, objects: int, size: int | None = None, compact: bool = False, id_tag: str = "ch"
) -> Iterator[Record]:
    """``events`` charge events round-robin over ``objects`` ids, in gateway record format; each object's events
    carry seq 0, 1, 2... in metadata and non-decreasing ``created`` (first ``charge.succeeded``, then
    ``charge.updated``)."""
    factory = EventFactory("charge.succeeded", size=size, compact=compact)
    base = int(time.time()) - 86_400
    received_ms = int(time.time() * 1000)
    for n in range(events):
        seq, index = divmod(n, objects)
        event_type = "charge.succeeded" if seq == 0 else "charge.updated"
        body = factory.make(event_type, f"{id_tag}_{index:08d}", f"evt_{id_tag}_{n:010d}", base + seq, seq)
        yield to_record(body, prefix, received_ms)


def run_json_child(name: str, command: Sequence[str], env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    """Run a baseline child to its end and return the JSON of the ``RESULT {json}`` line it printed."""
    with child(name, command, env) as proc:
        try:
            proc.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"{name} did not finish within {timeout:.0f}s:\n{proc.output()}") from None
        out = proc.output(tail=1 << 20)
        if proc.process.returncode != 0:
            raise RuntimeError(f"{name} exited with status {proc.process.returncode}:\n{out[-4000:]}")
    line = next((line for line in out.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{name} printed no RESULT line:\n{out[-4000:]}")
    result: dict[str, Any] = msgspec.json.decode(line.removeprefix("RESULT "))
    return result


def print_result(result: Mapping[str, Any]) -> None:
    """What a baseline child prints for :func:`run_json_child`."""
    print("RESULT " + msgspec.json.encode(dict(result)).decode(), flush=True)
