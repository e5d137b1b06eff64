"""The gateway's ASGI app in process, for what only a fault inside it shows (everything else runs against a real
gateway process and broker: test_gateway_inputs.py, test_gateway_hostile.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gateway.app import WEBHOOK_PATH, Gateway
from gateway.envelope import Record
from gateway.metrics import GatewayMetrics
from gateway.publisher import Publisher
from gateway.signature import sign
from ops.fixtures import build_event, encode
from ops.settings import Settings
from tests.support import SECRET


class _FailingPublisher(Publisher):
    """Fails as a Kafka client's bug would (aiokafka's admin reads ``cluster.controller.nodeId``, and the metadata
    may name no controller during an election)."""

    async def publish(self, record: Record) -> None:
        raise AttributeError("'NoneType' object has no attribute 'nodeId'")


def test_an_unexpected_error_while_publishing_is_a_counted_503_with_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn answers an exception escaping the app with its own plain 500: no Retry-After, and missing from
    hookstream_gateway_requests_total, which the gateway's error alerts read."""
    settings = Settings.from_env({"STRIPE_WEBHOOK_SECRETS": SECRET, "GATEWAY_RETRY_AFTER": "7"})
    metrics = GatewayMetrics()
    gateway = Gateway(settings, metrics, _FailingPublisher(settings, metrics))
    body = encode(build_event("charge.succeeded", object_id="ch_unexpected"))
    scope = {
        "type": "http",
        "method": "POST",
        "path": WEBHOOK_PATH,
        "headers": [(b"stripe-signature", sign(body, SECRET).encode()), (b"content-length", b"%d" % len(body))],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        asyncio.run(gateway(scope, receive, send))
    start = sent[0]
    assert start["status"] == 503
    assert (b"retry-after", b"7") in start["headers"]
    assert b"internal error" in b"".join(message.get("body", b"") for message in sent[1:])
    assert metrics.registry.get_sample_value("hookstream_gateway_requests_total", {"status": "503"}) == 1
    (logged,) = [record for record in caplog.records if record.name == "gateway.app"]
    assert logged.exc_info is not None and "nodeId" in str(logged.exc_info[1])
