"""``hookstream new-handler <event.type>``: write a handler module for one event type, and its test.

The handler keeps a few of the object's fields that the example object has (amount, currency, customer, ...) and
when the event happened; the test builds an event of that type from Stripe's example object, runs the handler
as a worker does and checks what it kept. Both pass ruff and pytest as written, and say what to change.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ops.fixtures import (
    UnknownEventType,
    carried_object_types,
    checked_object_type,
    event_types,
    example_object,
    fixture_for,
    not_an_event_type,
    wrong_kind,
)

#: Fields the template keeps when the example object has them, with the value the generated test sets.
_SAMPLES: dict[str, Any] = {
    "amount": 4242,
    "amount_due": 4242,
    "amount_total": 4242,
    "currency": "eur",
    "customer": "cus_scaffold",
}

_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_CREATED = 1_700_000_000


class ScaffoldError(ValueError):
    """The handler cannot be scaffolded (unknown type, already handled, file exists)."""


def module_name(event_type: str) -> str:
    """``customer.subscription.trial_will_end`` -> ``customer_subscription_trial_will_end``."""
    if not _EVENT_TYPE.fullmatch(event_type):
        raise ScaffoldError(f"{event_type!r} is not an event type (like invoice.paid)")
    return event_type.replace(".", "_")


def new_handler(
    event_type: str, root: Path, modules: Iterable[str] = ("handlers",), object_type: str | None = None
) -> tuple[Path, Path]:
    """Write ``handlers/<module>.py`` and ``tests/test_handler_<module>.py`` under ``root``; return both paths.

    ``object_type`` (what ``data.object.object`` is, so the topic) is for a type newer than hookstream's list of
    the types Stripe sends (without it such a type is refused as a typo would be), a listed one without an
    example object (instead of a guess), or one whose events carry several kinds of object (``customer.source.*``:
    a card, a bank account or a source: a kind other than the example object's gets ``<module>_<kind>.py``, beside
    the example's kind's handler); one that contradicts the example object is refused. Refuses (``ScaffoldError``)
    also a type (and kind) a handler already takes (a handler module under ``root``, or one of ``modules``:
    HOOKSTREAM_HANDLERS), and existing files. Writes nothing when it refuses.
    """
    module = module_name(event_type)
    if object_type is not None:
        try:
            checked_object_type(object_type)
        except ValueError as exc:
            raise ScaffoldError(str(exc)) from None
    listed = event_type in event_types()
    if not listed and object_type is None:
        raise ScaffoldError(
            f"{not_an_event_type(event_type)}; for a type newer than hookstream's list (ops/stripe/event-types.txt), "
            "say which object its events carry: --object-type OBJECT (e.g. payout)"
        )
    try:
        fixture: dict[str, Any] | None = fixture_for(event_type)
    except UnknownEventType:
        fixture = None
    another_kind = False
    if object_type is not None and fixture is not None:
        if not listed:
            fixture = None  # a type newer than the list: its object is the user's, not a look-alike's example
        elif (wrong := wrong_kind(event_type, object_type)) is not None:
            raise ScaffoldError(f"--object-type {wrong}")
        elif object_type == fixture["object"]:
            object_type = None  # the example object's type: the handler needs no object_type=
        else:  # another of the objects its events carry
            fixture = example_object(object_type)
            another_kind = True  # its module goes beside the example object's kind's, now or later
    kind = object_type or (str(fixture["object"]) if fixture is not None else None)
    handled_by = _handled_by(event_type, kind, root / "handlers", modules)
    if handled_by is not None:
        from streams.registry import registration_name

        what = registration_name(event_type, kind) if kind is not None else event_type
        raise ScaffoldError(f"{what} already has a handler: {handled_by}")
    if object_type is not None and (another_kind or (root / "handlers" / f"{module}.py").exists()):
        module = f"{module}_{object_type}"  # or the type's module takes another kind (a type newer than the list)
    handler_path = root / "handlers" / f"{module}.py"
    test_path = root / "tests" / f"test_handler_{module}.py"
    if not handler_path.parent.is_dir():
        raise ScaffoldError(f"{handler_path.parent} is not a directory: is {root} the project's root?")
    if (root / "__init__.py").exists():  # its handlers/ would be imported as <package>.handlers, not as handlers
        raise ScaffoldError(
            f"{root} is a package, not the project's root: run new-handler where handlers/ is at the top"
        )
    for path in (handler_path, test_path):
        if path.exists():
            raise ScaffoldError(f"{path} exists already")

    handler_source, test_source = _render(event_type, module, fixture, object_type)

    test_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with handler_path.open("x", encoding="utf-8") as f:
            f.write(handler_source)
        with test_path.open("x", encoding="utf-8") as f:
            f.write(test_source)
    except FileExistsError as exc:
        if exc.filename == str(test_path):
            handler_path.unlink()
        raise ScaffoldError(f"{exc.filename} exists already") from None
    return handler_path, test_path


def _handled_by(event_type: str, kind: str | None, handlers_dir: Path, modules: Iterable[str]) -> str | None:
    """The handler module that takes ``event_type``'s events carrying a ``kind`` of object (any kind when None): one
    under ``handlers_dir``, or one the registry discovers in ``modules``."""
    for path in sorted(handlers_dir.glob("*.py")):
        if not path.name.startswith("_") and any(
            t == event_type and (declared == _ANY_KIND or kind in (None, declared or _example_kind(t)))
            for t, declared in _registered(path)
        ):
            return str(path)
    from streams.registry import HandlerModuleError, handler_name, registry

    try:
        registry.discover(modules)
    except HandlerModuleError as exc:
        raise ScaffoldError(f"{exc}: fix it first (it would stop the worker too)") from None
    kinds = [kind] if kind is not None else sorted(registry.object_types)
    found = (registry.lookup(event_type, k) for k in kinds)
    return next((handler_name(r.handler) for r in found if r is not None), None)


def kinds_left_unhandled(event_type: str, object_type: str | None) -> tuple[str | None, list[str]]:
    """For a type whose events carry several kinds of object (``customer.source.*``), scaffolded for its example
    object's kind (``object_type`` None, or that kind): that kind, and the others, which its module leaves
    unhandled. (None, []) otherwise."""
    kinds, example = carried_object_types(event_type), _example_kind(event_type)
    if not kinds or object_type not in (None, example):
        return None, []
    return example, sorted(kinds - {example})


def _example_kind(event_type: str) -> str | None:
    try:
        return str(fixture_for(event_type)["object"])
    except UnknownEventType:
        return None


#: An ``object_type=`` the scan cannot read (a name, an expression): taken for any kind, so that it refuses too much
#: rather than let a second handler of one kind stop the worker.
_ANY_KIND = "*"


def _registered(path: Path) -> set[tuple[str, str | None]]:
    """What every ``@on(...)`` / ``@registry.on(...)`` decorator in a module (not imported) registers: each string
    argument (an event type) with the ``object_type=`` string if it has one (``_ANY_KIND`` if not a literal)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError:
        return set()
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            func = decorator.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "on":
                declared = next(
                    (_str(k.value) or _ANY_KIND for k in decorator.keywords if k.arg == "object_type"), None
                )
                found.update((t, declared) for t in map(_str, decorator.args) if t is not None)
    return found


def _str(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _literal(value: Any) -> str:
    """A Python literal for a sample value, formatted as ruff format writes it (double quotes)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _render(event_type: str, module: str, fixture: dict[str, Any] | None, declared: str | None) -> tuple[str, str]:
    action = event_type.rsplit(".", 1)[1]
    stamp = f"{action}_at"
    function = module if len(module) <= 60 else f"handle_{action}"  # keeps the def line within 120 characters
    if fixture is not None:  # a listed type, rendered around its example object
        object_type = str(fixture["object"])
        object_id = str(fixture.get("id") or "obj").split("_", 1)[0] + "_scaffold"
        samples = {name: value for name, value in _SAMPLES.items() if name in fixture}
        status = fixture.get("status") if isinstance(fixture.get("status"), str) else None
        decorator = (
            f"@on({json.dumps(event_type)})"
            if declared is None  # else one of the kinds of object its events carry
            else f"@on({json.dumps(event_type)}, object_type={json.dumps(object_type)})"
        )
    elif declared is not None:  # a type newer than the list, or one without an example: the object type is the user's
        object_type, object_id, samples, status = declared, "obj_scaffold", {}, None
        decorator = f"@on({json.dumps(event_type)}, object_type={json.dumps(object_type)})"
    else:
        object_type, object_id, samples, status = event_type.rsplit(".", 1)[0], "obj_scaffold", {}, None
        decorator = (
            "# TODO: no Stripe example object carries this event type, so object_type is a guess: check it (it\n"
            "# names the topic, stripe.<object type>), then drop this comment.\n"
            f"@on({json.dumps(event_type)}, object_type={json.dumps(object_type)})"
        )
    set_fields = ", ".join(f'"{name}": {_literal(value)}' for name, value in samples.items())
    if not samples:  # none of the fields the template knows: keep the id, a placeholder that shows how
        samples = {"id": object_id}

    keep_lines = "".join(f'    ctx.fields["{name}"] = obj.get("{name}")\n' for name in samples)
    handler = f'''"""Handler for ``{event_type}``.

Scaffolded by ``hookstream new-handler``. TODO: say what this module keeps and why (who reads it, and for
what).

The handler runs for each event, in order per object; if it raises, nothing it did to the state is kept and the
event is retried, then dead-lettered. It may run more than once for one event (a retry, a worker stopped before
the state was stored, a replay; with ``include_stale=True``, each redelivery of a stale event): make calls to
other systems idempotent (keyed by ``event.id``). Other event types of the same object can share it: list them
in ``@on(...)``. An event older than its object's state (Stripe does not promise order) is counted stale and does
not reach it, unless it is registered with ``include_stale=True``: it then runs with ``ctx.stale`` True, and
should keep the newer state and record only what this event alone tells.
"""

from __future__ import annotations

from streams.events import StripeEvent
from streams.registry import Context, on


{decorator}
async def {function}(event: StripeEvent, ctx: Context) -> None:
    obj = event.object  # the {object_type} as it was when the event happened
    # ctx.state.status is already obj["status"] (when the object has one; in a stale run, the newer event's);
    # assign it to say something else.
    # TODO: keep what a person looking at GET /objects/<id> needs. Use obj.get() (older API versions lack newer
    # fields), assign whole values (don't change nested dicts or lists in place) and keep only JSON values.
{keep_lines}    # when it happened, which the snapshot does not say
    ctx.fields["{stamp}"] = event.created
'''

    if fixture is not None:
        build = (
            "    # A realistic event around Stripe's example object: set the fields your handler reads.\n"
            "    raw = build_event(\n"
            "        EVENT_TYPE,\n"
            "        object_id=OBJECT_ID,\n"
            "        created=CREATED,\n"
            + (f"        object_fields={{{set_fields}}},\n" if set_fields else "")
            + ("        object_type=OBJECT_TYPE,\n" if declared is not None else "")
            + "    )\n"
        )
        fixtures_import = "from ops.fixtures import build_event, encode\n"
    else:
        build = (
            "    # No Stripe example object carries this event type: TODO put in the fields your handler reads.\n"
            f'    obj = {{"id": OBJECT_ID, "object": {json.dumps(object_type)}}}\n'
            "    raw = {\n"
            '        "id": "evt_scaffold",\n'
            '        "object": "event",\n'
            '        "type": EVENT_TYPE,\n'
            '        "created": CREATED,\n'
            '        "data": {"object": obj},\n'
            "    }\n"
        )
        fixtures_import = "from ops.fixtures import encode\n"
    status_check = (
        f"    assert state.status == {_literal(status)}  # the object's Stripe status, set before the handler runs\n"
        if status is not None
        else "    assert state.status is None  # this object has no status: set ctx.state.status to give it one\n"
    )
    checks = "".join(f'    assert state.fields["{name}"] == {_literal(value)}\n' for name, value in samples.items())
    test = f'''"""Tests for ``handlers/{module}.py``.

Scaffolded by ``hookstream new-handler``. TODO: change them with the handler: one assertion per field it keeps,
and a test for each case it tells apart.
"""

from __future__ import annotations

import asyncio

{fixtures_import}from streams.events import decode_event
from streams.registry import Context, registry
from streams.state import decode_state, encode_state, new_state, start_applying

EVENT_TYPE = "{event_type}"
HANDLER_MODULE = "handlers.{module}"
OBJECT_TYPE = "{object_type}"
OBJECT_ID = "{object_id}"
CREATED = {_CREATED:_}


def test_handler_keeps_the_fields_and_the_time() -> None:
    registry.discover()  # imports handlers/*.py, which registers the handler
    registration = registry.lookup(EVENT_TYPE, OBJECT_TYPE)
    assert registration is not None, f"no @on({{EVENT_TYPE!r}}) for a {{OBJECT_TYPE}} found in the handler modules"
    assert registration.handler.__module__ == HANDLER_MODULE
{build}    # as a worker decodes it: into the handler's model= when it declares one, else a dict
    event = decode_event(encode(raw), model=registration.model)
    state = new_state(OBJECT_ID, event, registration.object_type)
    start_applying(state, event)  # what the worker does before the handler: the status, account, livemode

    # the handler, under a deadline as in the worker (wait_for also takes any awaitable, as mypy wants)
    result = asyncio.run(asyncio.wait_for(registration.handler(event, Context(state)), timeout=10))
    assert result is None  # a handler returns nothing: the worker takes anything else for a mistake

    state = decode_state(encode_state(state, checked=True))  # what the next event will see, as the worker stores it

    assert state.object_type == OBJECT_TYPE
{status_check}{checks}    assert state.fields["{stamp}"] == CREATED
'''
    return handler, test
