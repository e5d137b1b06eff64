"""Every bad input gets its answer and its counter, against a real gateway process and broker."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from gateway.signature import sign
from ops.fixtures import build_event, encode
from tests.support import SECRET, WEBHOOK, BrokerInfo, GatewayProcess, consume, start_gateway, wait_for

pytestmark = pytest.mark.integration

OTHER_SECRET = "whsec_rotated_in_secret"
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def gw(broker: BrokerInfo) -> Iterator[GatewayProcess]:
    with start_gateway(
        broker,
        STRIPE_WEBHOOK_SECRETS=f"{SECRET},{OTHER_SECRET}",
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY),
        TOPIC_PREFIX="inputs.",
    ) as process:
        yield process


def _event(**kwargs: object) -> bytes:
    return encode(build_event("payment_intent.succeeded", **kwargs))  # type: ignore[arg-type]


def _refused(gw: GatewayProcess, header: str | None, body: bytes, reason: str) -> None:
    before = gw.metric("hookstream_gateway_signature_failures_total", reason=reason)
    answers_before = gw.metric("hookstream_gateway_requests_total", status="400")
    headers = {} if header is None else {"Stripe-Signature": header}
    response = gw.request("POST", WEBHOOK, body, headers)
    assert response.status == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]
    assert gw.metric("hookstream_gateway_signature_failures_total", reason=reason) == before + 1
    assert gw.metric("hookstream_gateway_requests_total", status="400") == answers_before + 1


def test_valid_event_is_acknowledged_with_its_id(gw: GatewayProcess) -> None:
    body = _event(event_id="evt_valid_1")
    response = gw.post_event(body)
    assert response.status == 200
    assert response.json() == {"received": True, "id": "evt_valid_1"}


def test_missing_header(gw: GatewayProcess) -> None:
    _refused(gw, None, _event(), "missing_header")


def test_malformed_header(gw: GatewayProcess) -> None:
    _refused(gw, "v1=abcdef", _event(), "malformed_header")
    _refused(gw, "t=soon,v1=abcdef", _event(), "malformed_header")


def test_no_v1_signature(gw: GatewayProcess) -> None:
    body = _event()
    _refused(gw, sign(body, SECRET).replace("v1=", "v0="), body, "no_v1_signature")


def test_wrong_secret_and_tampered_body(gw: GatewayProcess) -> None:
    body = _event()
    _refused(gw, sign(body, "whsec_attacker"), body, "no_matching_signature")
    _refused(gw, sign(body, SECRET), body.replace(b"succeeded", b"canceled"), "no_matching_signature")


def test_stale_timestamp(gw: GatewayProcess) -> None:
    body = _event()
    _refused(gw, sign(body, SECRET, int(time.time()) - 301), body, "timestamp_outside_tolerance")


def test_rotated_secret_is_accepted(gw: GatewayProcess) -> None:
    assert gw.post_event(_event(), secret=OTHER_SECRET).status == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"id": "evt_1", "type": ', "not valid JSON"),
        (b'{"type": "x.y", "data": {"object": {"object": "charge", "id": "ch_1"}}}', "id"),
        (b'{"id": "evt_1", "data": {"object": {"object": "charge", "id": "ch_1"}}}', "type"),
        (b'{"id": "evt_1", "type": "x.y", "data": {}}', "object"),
    ],
)
def test_signed_but_not_an_event(gw: GatewayProcess, body: bytes, error: str) -> None:
    before = gw.metric("hookstream_gateway_requests_total", status="400")
    response = gw.post_event(body)
    assert response.status == 400
    assert error in response.json()["error"]
    assert gw.metric("hookstream_gateway_requests_total", status="400") == before + 1


def test_body_over_the_limit_gets_413(gw: GatewayProcess) -> None:
    before = gw.metric("hookstream_gateway_requests_total", status="413")
    event = build_event("payment_intent.succeeded")
    event["data"]["object"]["metadata"] = {"padding": "x" * MAX_BODY}
    body = encode(event)
    response = gw.post_event(body)
    assert response.status == 413
    assert "larger than" in response.json()["error"]
    assert gw.metric("hookstream_gateway_requests_total", status="413") == before + 1


def test_chunked_body_over_the_limit_gets_413(gw: GatewayProcess) -> None:
    """Without Content-Length the limit still holds, counted while reading; the connection is closed.

    The server may close before the client has sent everything, so the client can see a reset instead of
    the answer: the gateway's own counter is the reliable witness.
    """
    before = gw.metric("hookstream_gateway_requests_total", status="413")
    chunk = b"x" * 16384
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        try:
            sock.sendall(
                f"POST {WEBHOOK} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                "Stripe-Signature: t=1,v1=00\r\n\r\n".encode()
            )
            for _ in range(MAX_BODY // len(chunk) + 2):
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while data := sock.recv(4096):
                answer += data
        except ConnectionResetError:
            pass
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413")
    assert gw.metric("hookstream_gateway_requests_total", status="413") == before + 1


def test_wrong_method_and_unknown_path(gw: GatewayProcess) -> None:
    before_405 = gw.metric("hookstream_gateway_requests_total", status="405")
    before_404 = gw.metric("hookstream_gateway_requests_total", status="404")
    get = gw.request("GET", WEBHOOK)
    assert get.status == 405
    assert get.headers["allow"] == "POST"
    assert gw.request("PUT", "/healthz").status == 405
    assert gw.request("POST", "/webhooks/other", _event()).status == 404
    assert gw.request("GET", "/").status == 404
    assert gw.metric("hookstream_gateway_requests_total", status="405") == before_405 + 2
    assert gw.metric("hookstream_gateway_requests_total", status="404") == before_404 + 2


def test_refused_requests_never_reach_kafka_and_nothing_secret_is_logged(
    gw: GatewayProcess, broker: BrokerInfo
) -> None:
    accepted = []
    for i in range(3):
        body = _event(event_id=f"evt_only_{i}", object_id="pi_only_these")
        assert gw.post_event(body).status == 200
        accepted.append(body)
    forged = _event(event_id="evt_forged", object_id="pi_only_these")
    assert gw.request("POST", WEBHOOK, forged, {"Stripe-Signature": sign(forged, "whsec_x")}).status == 400
    read: list[list[bytes]] = []

    def read_all() -> bool:  # the topic holds other tests' records too: read until these three are in
        records = consume(broker.bootstrap_servers, ["inputs.payment_intent"], 0, settle=1.0)
        read.append([r.value for r in records if r.key == b"pi_only_these"])
        return len(read[-1]) >= len(accepted)

    wait_for(read_all, 60, "the accepted deliveries in Kafka", interval=0.5)
    assert sorted(read[-1]) == sorted(accepted)
    log = gw.output()
    assert SECRET not in log and OTHER_SECRET not in log
    assert sign(forged, "whsec_x").split("v1=")[1] not in log
    assert json.loads(forged)["data"]["object"]["client_secret"] not in log


def test_an_event_over_the_brokers_record_limit_gets_413_and_the_gateway_stays_ready(broker: BrokerInfo) -> None:
    """A body within GATEWAY_MAX_BODY_BYTES whose record would be over KAFKA_MAX_MESSAGE_BYTES (the brokers'
    message.max.bytes) is refused with 413 before it is sent: retrying it cannot succeed, so it is not a broker
    outage (503, and the gateway reported unready until its next probe)."""
    with start_gateway(broker, KAFKA_MAX_MESSAGE_BYTES="4096", TOPIC_PREFIX="limits.") as gw:
        big = build_event("payment_intent.succeeded", event_id="evt_big", object_id="pi_limits")
        big["data"]["object"]["metadata"] = {"padding": "x" * 8192}
        response = gw.post_event(encode(big))
        assert response.status == 413, response.body
        assert "KAFKA_MAX_MESSAGE_BYTES" in response.json()["error"]
        assert gw.request("GET", "/readyz").status == 200
        small = _event(event_id="evt_small", object_id="pi_limits")
        assert gw.post_event(small).status == 200
        assert gw.metric("hookstream_gateway_requests_total", status="413") == 1
        assert "evt_big not stored" in gw.output()
    records = [r for r in consume(broker.bootstrap_servers, ["limits.payment_intent"], 1) if r.key == b"pi_limits"]
    assert [r.value for r in records] == [small]
