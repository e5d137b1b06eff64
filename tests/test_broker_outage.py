"""Broker trouble is never data loss: 503 with Retry-After, never 200, and recovery without a restart; the
hookstream_gateway_ready gauge follows /readyz."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.signature import sign
from ops.broker import EmbeddedBroker
from ops.fixtures import build_event, encode
from ops.process import free_port
from tests.support import (
    SECRET,
    WEBHOOK,
    BrokerInfo,
    GatewayProcess,
    consume,
    partition_count,
    start_gateway,
    wait_for,
)

pytestmark = pytest.mark.integration

PUBLISH_TIMEOUT = 3
RETRY_AFTER = "7"


def _post_until_200(gw: GatewayProcess, body: bytes, timeout: float = 60.0) -> list[int]:
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = gw.post_event(body, timeout=PUBLISH_TIMEOUT + 15)
        statuses.append(response.status)
        if response.status == 200:
            return statuses
        assert response.status == 503
        time.sleep(0.5)
    raise AssertionError(f"the gateway never recovered: {statuses[-5:]}\n{gw.output()[-3000:]}")


def _assert_503(gw: GatewayProcess, body: bytes) -> None:
    # the client's own timeout bounds the wait: a gateway that hangs fails here
    response = gw.post_event(body, timeout=PUBLISH_TIMEOUT + 10)
    assert response.status == 503, response.body
    assert response.headers["retry-after"] == RETRY_AFTER  # the setting, not the default (5)
    assert "retry" in response.json()["error"]


def _ready_gauge(gw: GatewayProcess) -> float:
    """hookstream_gateway_ready as scraped; the sample must exist (GatewayProcess.metric reads 0 when absent)."""
    text = gw.request("GET", "/metrics").body.decode()
    families = [f for f in text_string_to_metric_families(text) if f.name == "hookstream_gateway_ready"]
    assert len(families) == 1 and len(families[0].samples) == 1, "no hookstream_gateway_ready on /metrics"
    return float(families[0].samples[0].value)


def test_gateway_answers_503_while_the_broker_is_down_and_recovers_by_itself() -> None:
    port = free_port()
    broker = EmbeddedBroker(port)
    info = BrokerInfo(broker.bootstrap_servers, enable_idempotence=False)
    try:
        # 1. the gateway starts before any broker exists: alive, not ready, 503 for events
        with start_gateway(
            info, wait_ready=False, GATEWAY_PUBLISH_TIMEOUT=str(PUBLISH_TIMEOUT), GATEWAY_RETRY_AFTER=RETRY_AFTER
        ) as gw:
            assert gw.request("GET", "/readyz").status == 503
            assert _ready_gauge(gw) == 0
            _assert_503(gw, encode(build_event("invoice.paid", event_id="evt_early")))

            # 2. the broker comes up: the gateway connects on its own
            broker.start()
            gw.wait_until("/readyz", 200)
            assert _ready_gauge(gw) == 1
            first = encode(build_event("invoice.paid", object_id="in_1", event_id="evt_first"))
            assert _post_until_200(gw, first)[-1] == 200

            # 3. the broker goes away: 503 within the publish deadline, never 200, readiness follows
            broker.stop()
            _assert_503(gw, encode(build_event("invoice.paid", event_id="evt_during_outage")))
            gw.wait_until("/readyz", 503)
            assert _ready_gauge(gw) == 0  # what the alerts see: the counters stop once Kubernetes stops routing
            # the log says so (from the probes, every 2 s), once
            wait_for(lambda: "Kafka stopped answering" in gw.output(), 30, "the outage in the gateway's log")
            assert gw.metric("hookstream_gateway_requests_total", status="503") >= 2

            # 4. a broker is back (empty: memory storage): the next delivery succeeds, no restart
            broker.start()
            again = encode(build_event("invoice.paid", object_id="in_1", event_id="evt_after"))
            _post_until_200(gw, again)
            gw.wait_until("/readyz", 200)
            assert _ready_gauge(gw) == 1
            assert gw.process.poll() is None
            # the log says when publishing resumed, and why each 503 (never an empty reason)
            wait_for(lambda: "Kafka answers again: publishing resumed" in gw.output(), 30, "the recovery in the log")
            output = gw.output()
            assert output.count("Kafka stopped answering") == output.count("Kafka answers again") == 1, output
            assert "acknowledge: TimeoutError: )" not in output and "acknowledge: TimeoutError)" not in output

        records = consume(broker.bootstrap_servers, ["stripe.invoice"], 1)
        assert [r.value for r in records] == [again]
        assert partition_count(broker.bootstrap_servers, "stripe.invoice") == 8  # recreated as configured
    finally:
        broker.stop()


def test_a_worker_waiting_for_kafka_answers_its_health_probe_then_starts_when_kafka_comes() -> None:
    """A worker starts before Kafka does (a fresh install, an outage over a restart): alive, so /healthz answers
    and the startup probe does not kill it (its port was closed until Kafka answered); not ready (/readyz 503).
    Once the broker comes, it starts as usual on the same port."""
    from tests.support import start_worker, unique, wait_for

    port = free_port()
    broker = BrokerInfo(f"127.0.0.1:{port}", enable_idempotence=False)
    app_id, prefix = unique("early")
    embedded = EmbeddedBroker(port)
    with contextlib.ExitStack() as stack:
        stack.push(embedded)  # stopped after the worker, which commits on its way out
        worker = stack.enter_context(start_worker(broker, app_id, prefix, wait_ready=False))
        wait_for(lambda: "cannot reach Kafka" in worker.output(), 30, "the worker waiting for Kafka")
        assert _status(worker, "/healthz") == 200 and _status(worker, "/readyz") == 503
        embedded.start()
        worker.wait_ready()
        assert worker.request("/healthz").json() == {"status": "ok"}  # Faust's own page now


def _status(worker: Any, path: str) -> int | None:
    try:
        return int(worker.request(path, timeout=2).status)
    except OSError:
        return None


def _read_by_server(port: int, client_port: int) -> bool:
    """True once the server on ``port`` has read everything the client on ``client_port`` sent (/proc/net/tcp: the
    server side's receive queue is empty): the request is in the server's hands, not in the kernel's."""
    wanted = (f"0100007F:{port:04X}", f"0100007F:{client_port:04X}")
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == wanted:
                return int(fields[4].split(":")[1], 16) == 0
    return False


def test_a_gateway_stopped_while_a_publish_waits_answers_only_what_kafka_holds() -> None:
    """SIGTERM while a delivery waits for the broker's acknowledgement (the broker paused): the gateway finishes
    the request before it stops, and answers 200 only for a record the broker holds; otherwise 503 or nothing,
    and Stripe sends it again."""
    broker = EmbeddedBroker(free_port())
    info = BrokerInfo(broker.bootstrap_servers, enable_idempotence=False)
    broker.start()
    try:
        with start_gateway(info, GATEWAY_PUBLISH_TIMEOUT="20") as gw:
            assert gw.post_event(encode(build_event("invoice.paid", object_id="in_0"))).status == 200  # topic made
            body = encode(build_event("invoice.paid", object_id="in_1", event_id="evt_in_flight"))
            assert broker.process is not None
            broker.process.send_signal(signal.SIGSTOP)
            try:
                with socket.create_connection(("127.0.0.1", gw.port), timeout=60) as sock:
                    head = f"POST {WEBHOOK} HTTP/1.1\r\nHost: hookstream\r\nContent-Length: {len(body)}\r\n"
                    sock.sendall(f"{head}Stripe-Signature: {sign(body, SECRET)}\r\n\r\n".encode() + body)
                    client_port = sock.getsockname()[1]
                    wait_for(lambda: _read_by_server(gw.port, client_port), 30, "the gateway reading the delivery")
                    gw.process.send_signal(signal.SIGTERM)
                    time.sleep(1)  # the stop under way while the publish waits (the order is what matters)
                    assert gw.process.poll() is None, "the gateway stopped with a delivery in flight"
                    broker.process.send_signal(signal.SIGCONT)
                    answer = sock.recv(65536)
            finally:
                broker.process.send_signal(signal.SIGCONT)
            status = gw.process.wait(60)
            output = gw.output()
        assert status == 0 and "Traceback" not in output, output
        assert answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 503 ")) or answer == b"", answer[:200]
        stored = [
            r.value for r in consume(broker.bootstrap_servers, ["stripe.invoice"], 1, timeout=10) if r.value == body
        ]
        if answer.startswith(b"HTTP/1.1 200 "):
            assert stored == [body]  # a 200 is a promise
        # the likely end here: the broker came back within the publish deadline
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    finally:
        broker.stop()
