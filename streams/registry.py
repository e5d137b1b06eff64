"""Handlers: ``@on("invoice.paid")`` registers a function for event types; every module of the packages (and
their sub-packages) or modules named in ``HOOKSTREAM_HANDLERS`` (default: ``handlers``) is imported when a worker
starts. What can be checked is checked then: the event types, the handler's shape.

A handler is ``async def handler(event: StripeEvent, ctx: Context) -> None``. It reads the event, updates
``ctx.state`` (``status`` and ``fields``) and may ``ctx.emit`` follow-up records. If it raises, nothing it did
is kept: the event is retried from the stored state, and dead-lettered after the last attempt. With
``@on(..., model=Charge)`` (a msgspec Struct with the fields the handler reads), ``event.object`` is a ``Charge``
(``StripeEvent[Charge]``) instead of a dict: cheaper to decode, and checked (streams/events.py).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ops.kafka import is_topic_name
from streams.events import StripeEvent
from streams.state import ObjectState


@dataclass
class Emitted:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Context:
    """What a handler may touch: the object's state (its attributes, not the state itself: ``ctx.state = ...``
    raises), the attempt number and a way to emit records. ``stale``: the event is older than the state (only for
    handlers registered with ``include_stale=True``): the state holds a newer snapshot, which the handler should
    keep, and its status stays the newer one's whatever the handler sets."""

    state: ObjectState
    attempt: int = 1
    emitted: list[Emitted] = field(default_factory=list)
    stale: bool = False

    @property
    def fields(self) -> dict[str, Any]:
        """The object's kept fields (shown under ``fields`` by ``GET /objects/<id>``)."""
        return self.state.fields

    def emit(
        self, topic: str, value: bytes | bytearray | memoryview, key: bytes | bytearray | memoryview | None = None
    ) -> None:
        """Publish a follow-up record once the handler succeeded (never for a failed attempt), before the state is
        stored: at least once (streams/processor.py). Checked here, in the handler's attempt: a record the producer
        cannot send would otherwise be retried after the attempt, for ever, holding its object back."""
        if not isinstance(topic, str) or not is_topic_name(topic):
            raise TypeError(f"emit() takes a Kafka topic name (letters, digits, '.', '_', '-'), not {topic!r}")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"emit() takes the value as bytes, not {type(value).__name__} (encode it first)")
        if key is not None and not isinstance(key, bytes | bytearray | memoryview):
            raise TypeError(f"emit() takes the key as bytes or None, not {type(key).__name__}")
        self.emitted.append(Emitted(topic, None if key is None else bytes(key), bytes(value)))


Handler = Callable[[StripeEvent, Context], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Registration:
    event_type: str
    object_type: str
    handler: Handler
    model: type | None = None  # what ``data.object`` is decoded into (None: a dict)
    include_stale: bool = False  # also run for events older than the state (``Context.stale``)


class HandlerRegistry:
    """(event type, object type) -> handler, and the object types (hence topics) that have handlers.

    Keyed by both because some event types carry several kinds of object (``customer.source.created``: a card, a
    bank account or a source), each on its own topic: one handler per kind, and a handler never gets another kind's
    events (a worker looks a record's handler up by the object type its topic names).
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str], Registration] = {}

    def on(
        self,
        *event_types: str,
        object_type: str | None = None,
        model: type | None = None,
        include_stale: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated coroutine function for ``event_types``.

        The object type (and so the topic) is read from Stripe's example object for each event type; pass
        ``object_type`` for event types without one, newer than hookstream's list, or whose events carry several
        kinds of object (``customer.source.*``: a card, a bank account or a source; each kind may have a handler of
        its own, and a handler gets only its kind's events). ``model``: a msgspec Struct to
        decode ``data.object`` into (only its fields are built), instead of a dict. ``include_stale``: run it also
        for an event older than its object's state (Stripe does not promise order), with ``ctx.stale`` True, for
        what must happen for every event of a type (a receipt on ``invoice.paid``, a time stamp); the state keeps
        its newer status and last event, and only what the handler sets in ``ctx.fields`` (and emits) is kept. The
        event is not remembered as applied: each redelivery runs it again. A run that succeeds counts ``stale``.
        """
        if not event_types:
            raise TypeError("@on() needs at least one event type")
        if model is not None and not (isinstance(model, type) and issubclass(model, msgspec.Struct)):
            raise TypeError(f"model= takes a msgspec.Struct subclass, not {model!r}")

        objects = {event_type: _object_type_of(event_type, object_type) for event_type in event_types}

        def register(handler: Handler) -> Handler:
            _check_handler(handler)
            for event_type in event_types:
                key = (event_type, objects[event_type])
                existing = self._by_key.get(key)
                if existing is not None and existing.handler is not handler:
                    raise ValueError(
                        f"{registration_name(*key)} already has a handler: {handler_name(existing.handler)}; "
                        f"{handler_name(handler)} cannot take it too"
                    )
                self._by_key[key] = Registration(event_type, objects[event_type], handler, model, include_stale)
            return handler

        return register

    def lookup(self, event_type: str, object_type: str) -> Registration | None:
        """The handler of ``event_type``'s events that carry an ``object_type`` (the worker's lookup, per record)."""
        return self._by_key.get((event_type, object_type))

    def get(self, event_type: str) -> Registration | None:
        """The handler of ``event_type``, whatever object its events carry; LookupError if several kinds of object
        have one each (use ``lookup``)."""
        found = [r for (t, _), r in self._by_key.items() if t == event_type]
        if len(found) > 1:
            kinds = ", ".join(sorted(r.object_type for r in found))
            raise LookupError(f"{event_type} has a handler per kind of object ({kinds}): look one up by its kind")
        return found[0] if found else None

    @property
    def object_types(self) -> set[str]:
        return {object_type for _, object_type in self._by_key}

    @property
    def handled(self) -> list[tuple[str, str]]:
        """Every (event type, object type) that has a handler."""
        return sorted(self._by_key)

    @property
    def event_types(self) -> list[str]:
        return sorted({event_type for event_type, _ in self._by_key})

    def discover(self, modules: Iterable[str] = ("handlers",)) -> None:
        """Import each named module, and every module of a named package and of its sub-packages, so that their
        ``@on`` calls run; HandlerModuleError names the module that does not import.

        Modules and packages whose name starts with ``_`` are helpers, not handler modules, and are not imported.
        """
        for name in (modules,) if isinstance(modules, str) else modules:
            module = _import(name)
            _import_package(name, getattr(module, "__path__", []))


class HandlerModuleError(ImportError):
    """A handler module (HOOKSTREAM_HANDLERS) does not import: the worker cannot start without it."""


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # SyntaxError and a failing module body included
        raise HandlerModuleError(f"handler module {name} does not import: {type(exc).__name__}: {exc}") from exc


def _import_package(name: str, path: Iterable[str]) -> None:
    for info in pkgutil.iter_modules(path, prefix=f"{name}."):
        if not info.name.rsplit(".", 1)[-1].startswith("_"):
            module = _import(info.name)
            if info.ispkg:
                _import_package(info.name, module.__path__)


def _check_handler(handler: Any) -> None:
    """Refuse, when the module is imported, what would fail (or silently do nothing) at every event."""
    call = getattr(handler, "__call__", None)  # noqa: B004  # an instance with an async __call__ is a handler too
    wrapped = inspect.unwrap(handler) if callable(handler) else None  # a plain decorator (functools.wraps) of one
    if not any(inspect.iscoroutinefunction(f) for f in (handler, call, wrapped)):
        raise TypeError(f"{handler_name(handler)} is not a handler: write it as `async def handler(event, ctx)`")
    try:
        inspect.signature(handler).bind(None, None)
    except TypeError:
        raise TypeError(f"{handler_name(handler)} must take two arguments: `async def handler(event, ctx)`") from None


def _object_type_of(event_type: str, declared: str | None) -> str:
    """The object type (so the topic) of ``event_type``'s events: ``declared``, else Stripe's example object's. An
    event type missing from hookstream's list only with ``declared`` (a type newer than the list), so that a
    misspelt one fails here instead of never seeing an event; for a listed type, ``declared`` must be a kind its
    events carry (``customer.source.*``: a card, a bank account or a source), or the handler would never run."""
    from ops.fixtures import (
        UnknownEventType,
        checked_object_type,
        event_types,
        fixture_for,
        not_an_event_type,
        wrong_kind,
    )

    if event_type not in event_types() and declared is None:
        raise ValueError(
            f"{not_an_event_type(event_type)}; for a type newer than hookstream's list (ops/stripe/event-types.txt), "
            "pass object_type=... to @on()"
        )
    if declared is not None:
        wrong = wrong_kind(event_type, checked_object_type(declared))
        if wrong is not None:
            raise ValueError(f"object_type={wrong}")
        return declared
    try:
        return str(fixture_for(event_type)["object"])
    except UnknownEventType:
        raise ValueError(f"cannot tell which object {event_type!r} carries: pass object_type=... to @on()") from None


def registration_name(event_type: str, object_type: str) -> str:
    """How a message names a registration: the object type only for an event type that carries several."""
    from ops.fixtures import carried_object_types

    return f"{event_type} ({object_type})" if carried_object_types(event_type) else event_type


def handler_name(handler: Any) -> str:
    """``module.qualname`` of a handler (its repr for callables without a name: an instance, a partial)."""
    name = getattr(handler, "__qualname__", None)
    return f"{handler.__module__}.{name}" if name is not None else repr(handler)


#: The registry ``@on`` writes to and the workers read.
registry = HandlerRegistry()
on = registry.on
