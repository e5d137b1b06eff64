"""The Stripe event as workers and handlers see it: the whole document, decoded once per event."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class EventData(msgspec.Struct):
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(msgspec.Struct):
    """A Stripe event. ``object`` is the snapshot of the Stripe object at the time of the event."""

    id: NonEmpty
    type: NonEmpty
    created: int
    data: EventData
    livemode: bool = False
    api_version: str | None = None
    account: str | None = None

    @property
    def object(self) -> dict[str, Any]:
        return self.data.object


class BadRecord(ValueError):
    """A record on an event topic that is not a Stripe event (it did not come through the gateway)."""


_decoder = msgspec.json.Decoder(StripeEvent)


def decode_event(value: bytes | None, max_bytes: int | None = None) -> StripeEvent:
    """The event in a record's value; ``BadRecord`` saying why for anything else (``max_bytes``: the largest
    value accepted, as the gateway's body limit)."""
    if value is None:
        raise BadRecord("record has no value")
    if max_bytes is not None and len(value) > max_bytes:
        raise BadRecord(f"value of {len(value)} bytes is over the {max_bytes}-byte limit")
    try:
        return _decoder.decode(value)
    except msgspec.ValidationError as exc:
        raise BadRecord(f"not a Stripe event: {exc}") from None
    except msgspec.DecodeError:
        raise BadRecord("value is not valid JSON") from None
    except RecursionError:
        raise BadRecord("value is JSON nested too deeply") from None
