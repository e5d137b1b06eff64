"""Broker trouble is never data loss: 503 with Retry-After, never 200, and recovery without a restart; the
hookstream_gateway_ready gauge follows /readyz."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.broker import EmbeddedBroker
from ops.fixtures import build_event, encode
from ops.process import free_port
from tests.support import BrokerInfo, GatewayProcess, consume, partition_count, start_gateway

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
            assert gw.metric("hookstream_gateway_requests_total", status="503") >= 2

            # 4. a broker is back (empty: memory storage): the next delivery succeeds, no restart
            broker.start()
            again = encode(build_event("invoice.paid", object_id="in_1", event_id="evt_after"))
            _post_until_200(gw, again)
            gw.wait_until("/readyz", 200)
            assert _ready_gauge(gw) == 1
            assert gw.process.poll() is None

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
