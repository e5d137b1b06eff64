"""Handlers: ``@on("invoice.paid")`` registers a function for event types; every module of the packages or
modules named in ``HOOKSTREAM_HANDLERS`` (default: ``handlers``) is imported when a worker starts.

A handler is ``async def handler(event: StripeEvent, ctx: Context) -> None``. It reads the event, updates
``ctx.state`` (``status`` and ``fields``) and may ``ctx.emit`` follow-up records. If it raises, nothing it did
is kept: the event is retried from the stored state, and dead-lettered after the last attempt. With
``@on(..., model=Charge)`` (a msgspec Struct with the fields the handler reads), ``event.object`` is a ``Charge``
(``StripeEvent[Charge]``) instead of a dict: cheaper to decode, and checked (streams/events.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from streams.events import StripeEvent
from streams.state import ObjectState


@dataclass
class Emitted:
    topic: str
    key: bytes | None
    value: bytes


@dataclass
class Context:
    """What a handler may touch: the object's state, the attempt number and a way to emit records."""

    state: ObjectState
    attempt: int = 1
    emitted: list[Emitted] = field(default_factory=list)

    @property
    def fields(self) -> dict[str, Any]:
        """The object's kept fields (shown under ``fields`` by ``GET /objects/<id>``)."""
        return self.state.fields

    def emit(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Publish a follow-up record once the handler succeeded (never for a failed attempt), before the state is
        stored: at least once (streams/processor.py)."""
        self.emitted.append(Emitted(topic, key, value))


Handler = Callable[[StripeEvent, Context], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Registration:
    event_type: str
    object_type: str
    handler: Handler
    model: type | None = None  # what ``data.object`` is decoded into (None: a dict)


class HandlerRegistry:
    """Event type -> handler, and the object types (hence topics) that have handlers."""

    def __init__(self) -> None:
        self._by_type: dict[str, Registration] = {}

    def on(
        self, *event_types: str, object_type: str | None = None, model: type | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the decorated coroutine function for ``event_types``.

        The object type (and so the topic) is read from Stripe's example object for each event type; pass
        ``object_type`` for event types without one. ``model``: a msgspec Struct to decode ``data.object`` into
        (only its fields are built), instead of a dict.
        """
        if not event_types:
            raise TypeError("@on() needs at least one event type")
        if model is not None and not (isinstance(model, type) and issubclass(model, msgspec.Struct)):
            raise TypeError(f"model= takes a msgspec.Struct subclass, not {model!r}")

        def register(handler: Handler) -> Handler:
            for event_type in event_types:
                existing = self._by_type.get(event_type)
                if existing is not None and existing.handler is not handler:
                    raise ValueError(
                        f"{event_type} already has a handler: {_name(existing.handler)}; "
                        f"{_name(handler)} cannot take it too"
                    )
                self._by_type[event_type] = Registration(
                    event_type, object_type or _object_type_of(event_type), handler, model
                )
            return handler

        return register

    def get(self, event_type: str) -> Registration | None:
        return self._by_type.get(event_type)

    @property
    def object_types(self) -> set[str]:
        return {r.object_type for r in self._by_type.values()}

    @property
    def event_types(self) -> list[str]:
        return sorted(self._by_type)

    def discover(self, modules: Iterable[str] = ("handlers",)) -> None:
        """Import each named module, and every module of a named package, so that their ``@on`` calls run.

        Modules whose name starts with ``_`` are helpers, not handler modules, and are not imported.
        """
        for name in (modules,) if isinstance(modules, str) else modules:
            module = importlib.import_module(name)
            for info in pkgutil.iter_modules(getattr(module, "__path__", []), prefix=f"{name}."):
                if not info.name.rsplit(".", 1)[-1].startswith("_"):
                    importlib.import_module(info.name)


def _object_type_of(event_type: str) -> str:
    from ops.fixtures import UnknownEventType, fixture_for

    try:
        return str(fixture_for(event_type)["object"])
    except UnknownEventType:
        raise ValueError(f"cannot tell which object {event_type!r} carries: pass object_type=... to @on()") from None


def _name(handler: Callable[..., Any]) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


#: The registry ``@on`` writes to and the workers read.
registry = HandlerRegistry()
on = registry.on
