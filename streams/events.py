"""The Stripe event as workers and handlers see it, decoded once per event.

``data.object`` is a dict by default. A handler registered with a ``model`` (a msgspec Struct naming the fields
it reads: ``@on("charge.succeeded", model=Charge)``) gets that Struct instead: only those fields are built and
checked, which makes decoding a large object about three times cheaper (bench/README.md), and a Stripe object
that does not match the model is dead-lettered with msgspec's reason instead of failing inside the handler.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Generic, TypeVar

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

ObjectT = TypeVar("ObjectT")


class EventData(msgspec.Struct, Generic[ObjectT]):
    object: ObjectT
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(msgspec.Struct, Generic[ObjectT]):
    """A Stripe event. ``object`` is the snapshot of the Stripe object at the time of the event: a dict, or the
    handler's model."""

    id: NonEmpty
    type: NonEmpty
    created: int
    data: EventData[ObjectT]
    livemode: bool = False
    api_version: str | None = None
    account: str | None = None

    @property
    def object(self) -> ObjectT:
        return self.data.object


class BadRecord(ValueError):
    """A record on an event topic that is not a Stripe event (it did not come through the gateway), or whose
    object does not match its handler's model."""


def object_field(obj: Any, name: str) -> Any:
    """A field of ``data.object`` whether it was decoded as a dict or as a model (None when absent)."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


@functools.cache
def _decoder(model: type | None) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(StripeEvent[dict[str, Any]] if model is None else StripeEvent[model])  # type: ignore[valid-type]


def decode_event(value: bytes | None, max_bytes: int | None = None, model: type | None = None) -> StripeEvent[Any]:
    """The event in a record's value, its object as ``model`` (a msgspec Struct) or a dict; ``BadRecord`` saying
    why for anything else (``max_bytes``: the largest value accepted, as the gateway's body limit)."""
    if value is None:
        raise BadRecord("record has no value")
    if max_bytes is not None and len(value) > max_bytes:
        raise BadRecord(f"value of {len(value)} bytes is over the {max_bytes}-byte limit")
    try:
        event: StripeEvent[Any] = _decoder(model).decode(value)
        return event
    except msgspec.ValidationError as exc:
        if model is not None and "$.data.object" in str(exc):
            raise BadRecord(f"object does not match {model.__name__}: {exc}") from None
        raise BadRecord(f"not a Stripe event: {exc}") from None
    except msgspec.DecodeError:
        raise BadRecord("value is not valid JSON") from None
    except RecursionError:
        raise BadRecord("value is JSON nested too deeply") from None
