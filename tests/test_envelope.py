"""Routing a verified body to a record: topic, key, headers, value untouched."""

from __future__ import annotations

import json

import pytest

from gateway.envelope import EnvelopeError, to_record
from ops.fixtures import API_VERSION, build_event, encode


def test_record_routes_by_object_type_and_id_and_keeps_the_raw_body() -> None:
    event = build_event("customer.subscription.updated", object_id="sub_123", created=1700000000, account="acct_9")
    body = encode(event)
    record = to_record(body, "stripe.", 1_700_000_000_123)
    assert record.topic == "stripe.subscription"
    assert record.key == b"sub_123"
    assert record.value is body
    headers = dict(record.headers)
    assert headers == {
        "event-id": event["id"].encode(),
        "event-type": b"customer.subscription.updated",
        "event-created": b"1700000000",
        "livemode": b"false",
        "api-version": API_VERSION.encode(),  # Stripe always sends one; built events too
        "account": b"acct_9",
        "received-at": b"1700000000123",
    }


def test_object_without_id_is_keyed_by_event_id() -> None:
    event = build_event("invoice.upcoming")  # an upcoming invoice has no id yet, as Stripe sends it
    assert "id" not in event["data"]["object"]
    record = to_record(encode(event), "stripe.", 0)
    assert record.topic == "stripe.invoice"
    assert record.key == event["id"].encode()


def test_topic_prefix_is_configurable() -> None:
    record = to_record(encode(build_event("checkout.session.completed")), "acme-", 0)
    assert record.topic == "acme-checkout.session"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a Stripe event"),
        (b'{"type": "x", "data": {"object": {"object": "charge"}}}', "id"),
        (b'{"id": "evt_1", "data": {"object": {"object": "charge"}}}', "type"),
        (b'{"id": "evt_1", "type": "charge.succeeded"}', "data"),
        (b'{"id": "evt_1", "type": "charge.succeeded", "data": {}}', "object"),
        (b'{"id": "", "type": "charge.succeeded", "data": {"object": {"object": "charge"}}}', "id"),
        (b'{"id": 5, "type": "charge.succeeded", "data": {"object": {"object": "charge"}}}', "id"),
        (b'{"id": "evt_1", "type": "c", "data": {"object": {"object": "a/b"}}}', "topic"),
        (b'{"id": "evt_1", "type": "c", "data": {"object": {"object": "charge", "id": "%b"}}}' % (b"x" * 256), "255"),
        # signed bodies that raised out of the gateway (500) or reached Kafka before
        (b'{"id": "evt_\xff", "type": "c", "data": {"object": {"object": "charge"}}}', "UTF-8"),
        (b'{"id": "evt_1", "type": "c", "data": {"object": {"object": "charge", "n": "\xc3("}}}', "UTF-8"),
        (
            b'{"id": "evt_1", "type": "c", "data": {"object": {"object": "charge"}}, "n": %b}'
            % (b"[" * 5000 + b"]" * 5000),
            "deeply",
        ),
        # a thin event (Stripe's v2 event destinations): the object's id and type, no snapshot
        (
            b'{"id": "evt_1", "object": "v2.core.event", "type": "v1.billing.meter.error_report_triggered", '
            b'"created": "2026-11-28T10:00:00.000Z", "related_object": {"id": "mtr_1", "type": "billing.meter"}}',
            "thin event .* snapshot payloads",
        ),
        (b'{"id": 5, "object": "v2.core.event"}', "thin event"),
        (
            b'{"id": "evt_1", "object": "event", "type": "c"}',
            "not a Stripe event: Object missing required field `data`",
        ),
    ],
)
def test_bad_envelopes_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        to_record(body, "stripe.", 0)


def test_unknown_fields_are_ignored_not_rejected() -> None:
    event = json.loads(encode(build_event("charge.succeeded")))
    event["something_new"] = {"deep": [1, 2, 3]}
    assert to_record(json.dumps(event).encode(), "stripe.", 0).topic == "stripe.charge"
