"""Handlers written as for any asyncio program: httpx (stripe-python's async client) and anyio's cancel scopes,
context variables, a client library that wraps a cancellation. The first step of an idle object's event runs
eagerly in the fetch loop's turn (streams/eager.py); none of that may show."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread

import anyio
import httpx
import pytest

from streams.actors import ActorPool
from streams.events import StripeEvent
from streams.processor import EventProcessor, NoLongerOurs
from streams.registry import Context, HandlerRegistry
from tests.support import ConsumedRecord, DictStore, processor, recording_send


class _Invoices(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.path.rsplit("/", 1)[-1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def service() -> Iterator[str]:
    """A local HTTP service answering each GET with the last part of its path."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Invoices)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _through_a_pool(proc: EventProcessor, object_ids: list[str], event_type: str = "invoice.paid") -> list[str]:
    """Each object's event submitted as the worker's fetch loop submits it (idle objects: eagerly)."""
    outcomes: list[str] = []

    async def finish(record: ConsumedRecord) -> None:
        outcomes.append(str(await proc.process(record)))

    pool: ActorPool[ConsumedRecord] = ActorPool(finish, max_inflight=16)
    for object_id in object_ids:
        await pool.submit(object_id.encode(), ConsumedRecord.of_event(event_type, object_id))
    await asyncio.wait_for(pool.drain(), 30)
    return outcomes


def test_a_handler_calling_a_service_with_httpx_succeeds_on_its_first_attempt(service: str) -> None:
    """httpx runs on anyio, whose cancel scopes note the current task when entered and check it when left: the
    first attempt failed (TypeError: no weak reference to the eager stand-in) and, with one attempt allowed, every
    idle object's event was dead-lettered."""
    handlers = HandlerRegistry()
    errors: list[str] = []
    clients: list[httpx.AsyncClient] = []

    @handlers.on("invoice.paid")
    async def fetch(event: StripeEvent, ctx: Context) -> None:
        try:
            answer = await clients[0].get(f"{service}/v1/invoices/{event.object['id']}", timeout=10)
        except BaseException as exc:
            errors.append(f"attempt {ctx.attempt}: {exc!r}")
            raise
        ctx.fields["fetched"] = answer.text

    store = DictStore()

    async def run() -> list[str]:
        async with httpx.AsyncClient() as client:
            clients.append(client)
            return await _through_a_pool(processor(handlers, store, recording_send([]), timeout=10), ["in_1", "in_2"])

    assert asyncio.run(run()) == ["ok", "ok"], errors
    assert errors == []
    assert all(b'"fetched":"in_' in state for state in store.values())


def test_anyio_timeouts_entered_in_the_first_step_cancel_the_handler_and_only_it() -> None:
    """anyio.fail_after entered before the handler first waits, left after: it times the handler out, and a scope
    that does not expire is left without error."""
    handlers = HandlerRegistry()
    errors: list[str] = []

    @handlers.on("invoice.paid")
    async def scoped(event: StripeEvent, ctx: Context) -> None:
        try:
            with anyio.fail_after(0.05 if event.object["id"] == "in_slow" else 10):
                await anyio.sleep(3600 if event.object["id"] == "in_slow" else 0.01)
            with anyio.CancelScope() as scope:  # cancelled from inside, after a wait: only the scope ends
                await anyio.sleep(0.01)
                scope.cancel()
                await anyio.sleep(3600)
        except BaseException as exc:
            errors.append(f"{event.object['id']}: {exc!r}")
            raise

    sent: list[tuple[str, dict[str, bytes]]] = []
    outcomes = asyncio.run(
        _through_a_pool(processor(handlers, DictStore(), recording_send(sent)), ["in_slow", "in_ok"])
    )
    assert sorted(outcomes) == ["dead_lettered", "ok"]
    assert errors == ["in_slow: TimeoutError()"]
    assert [headers["error-type"] for _, headers in sent] == [b"TimeoutError"]


def test_an_anyio_scope_cancelled_in_the_first_step_catches_its_own_cancellation() -> None:
    """A scope whose time is up as it is entered (a budget already spent), or cancelled at once: anyio tells its
    own cancellation by the message it cancels the task with. Asked of the stand-in before its actor task existed,
    the request reached the task without it, and the scope let it through: the attempt failed."""
    handlers = HandlerRegistry()

    @handlers.on("invoice.paid")
    async def budgeted(event: StripeEvent, ctx: Context) -> None:
        with anyio.move_on_after(-1) as spent:
            await anyio.sleep(3600)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anyio.sleep(3600)
        ctx.fields["skipped"] = spent.cancelled_caught and scope.cancelled_caught

    sent: list[tuple[str, dict[str, bytes]]] = []
    store = DictStore()
    assert asyncio.run(_through_a_pool(processor(handlers, store, recording_send(sent)), ["in_1"])) == ["ok"], sent
    assert b'"skipped":true' in store[b"in_1"]


def test_context_variables_a_handler_sets_stay_its_own() -> None:
    """Set in the first step (the fetch loop's turn), a variable leaked into the next object's handler; reset after
    a wait, it raised (the token was made in another context) and the event was dead-lettered."""
    handlers = HandlerRegistry()
    current_object: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_object", default=None)
    seen: list[tuple[str, str | None]] = []

    @handlers.on("invoice.paid")
    async def traced(event: StripeEvent, ctx: Context) -> None:
        seen.append((event.object["id"], current_object.get()))
        token = current_object.set(event.object["id"])
        if event.object["id"] != "in_no_wait":
            await asyncio.sleep(0.01)
        assert current_object.get() == event.object["id"]
        current_object.reset(token)

    @handlers.on("invoice.updated")
    async def leaky(event: StripeEvent, ctx: Context) -> None:  # sets and never resets, as a careless tracer
        current_object.set(event.object["id"])
        await asyncio.sleep(0.01)

    proc = processor(handlers, DictStore(), recording_send([]))

    async def run() -> list[str]:
        outcomes = await _through_a_pool(proc, ["in_leaky"], "invoice.updated")
        outcomes += await _through_a_pool(proc, ["in_wait", "in_no_wait", "in_next"])
        seen.append(("fetch loop", current_object.get()))
        return outcomes

    assert asyncio.run(run()) == ["ok"] * 4
    assert seen == [("in_wait", None), ("in_no_wait", None), ("in_next", None), ("fetch loop", None)]


def test_a_cancellation_a_library_wraps_in_an_error_is_not_retried() -> None:
    """The worker gives a partition up (rebalance) and cancels its handlers; a client library turns the
    CancelledError into its own error. That is no failed attempt to retry: a retry ran the handler again while
    another worker owned the partition."""
    handlers = HandlerRegistry()
    runs: list[tuple[int, bool]] = []
    given_up = False

    @handlers.on("invoice.paid")
    async def wrapped(event: StripeEvent, ctx: Context) -> None:
        runs.append((ctx.attempt, given_up))
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError as exc:
            raise RuntimeError("request aborted") from exc

    def give_up() -> None:
        nonlocal given_up
        given_up = True

    store = DictStore()
    proc = processor(handlers, store, recording_send([]), attempts=3, timeout=10, ours=lambda _: not given_up)
    ended: list[str] = []

    async def run() -> int:
        async def finish(record: ConsumedRecord) -> None:
            try:
                ended.append(str(await proc.process(record)))
            except (asyncio.CancelledError, NoLongerOurs) as exc:
                ended.append(type(exc).__name__)
                raise

        pool: ActorPool[ConsumedRecord] = ActorPool(finish, max_inflight=8)
        await pool.submit(b"in_1", ConsumedRecord.of_event("invoice.paid", "in_1"))
        return await pool.stop(grace=0.05, patience=5.0, giving_up=give_up)

    assert asyncio.run(run()) == 1  # one item unfinished when the grace ended
    assert runs == [(1, False)], runs  # no attempt after the give-up
    assert ended == ["NoLongerOurs"] and store == {}  # neither stored nor dead-lettered: the new owner runs it
