"""The few fields of a Stripe event the gateway needs, and the Kafka record it becomes.

Only the envelope is decoded (msgspec skips everything else without building it); the record's value is the
raw body, byte for byte, so it stays auditable and re-verifiable. See DESIGN.md, "Records in Kafka".
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ops.kafka import is_topic_name

#: Stripe's ids, types and versions are short; a longer one is not Stripe's, and as a key or header it could push
#: the record past the broker's size limit (a 600 KB object id did: librdkafka refused it, measured).
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class EnvelopeError(ValueError):
    """The body is not a Stripe event the gateway can route."""


class StripeObjectRef(msgspec.Struct):
    object: str
    id: Short | None = None


class EventData(msgspec.Struct):
    object: StripeObjectRef


class Envelope(msgspec.Struct):
    """A Stripe event's routing fields: what it is, when it happened and which object it is about."""

    id: Short
    type: Short
    data: EventData
    created: int | None = None
    livemode: bool = False
    api_version: Short | None = None
    account: Short | None = None


class Record(msgspec.Struct, frozen=True):
    """One event as it goes to Kafka."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    event_type: str


_decoder = msgspec.json.Decoder(Envelope)


class _Kind(msgspec.Struct):
    object: str | None = None


#: What ``object`` a body says it is, read only to explain a refusal (never on the path of a valid event).
_kind_decoder = msgspec.json.Decoder(_Kind)

#: Stripe's "thin" events (v2 event destinations) name the object they are about, without its snapshot: nothing to
#: key, route or apply.
_THIN_EVENT = "v2.core.event"


def decode_envelope(body: bytes) -> Envelope:
    """Decode the routing fields of ``body`` or raise EnvelopeError saying what is wrong."""
    try:
        # JSON travels as UTF-8 (RFC 8259) and Stripe signs text; msgspec does not check the strings it skips
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("body is not valid JSON: not UTF-8") from None
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        if _object_of(body) == _THIN_EVENT:
            raise EnvelopeError(
                "a thin event (v2.core.event): hookstream takes snapshot events, whose data.object is the object; "
                "send this event destination's events with snapshot payloads"
            ) from None
        raise EnvelopeError(f"not a Stripe event: {exc}") from None
    except msgspec.DecodeError:
        raise EnvelopeError("body is not valid JSON") from None
    except RecursionError:  # raised by msgspec even for nesting inside fields it skips
        raise EnvelopeError("body is not valid JSON: nested too deeply") from None


def _object_of(body: bytes) -> str | None:
    try:
        return _kind_decoder.decode(body).object
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def to_record(body: bytes, topic_prefix: str, received_at_ms: int) -> Record:
    """Route a verified body: topic from ``data.object.object``, key from ``data.object.id`` (else event id)."""
    event = decode_envelope(body)
    topic = topic_prefix + event.data.object.object
    if not is_topic_name(topic):
        raise EnvelopeError("data.object.object cannot name a Kafka topic")
    headers = [
        ("event-id", event.id.encode()),
        ("event-type", event.type.encode()),
        ("event-created", b"%d" % event.created if event.created is not None else b""),
        ("livemode", b"true" if event.livemode else b"false"),
        ("api-version", (event.api_version or "").encode()),
        ("received-at", b"%d" % received_at_ms),
    ]
    if event.account:
        headers.append(("account", event.account.encode()))
    key = event.data.object.id or event.id
    return Record(topic, key.encode(), body, headers, event.id, event.type)
