"""uvicorn's httptools protocol with the two limits it lacks: a deadline to receive a request, and a header cap.

uvicorn times a connection out only while it idles between requests. A client that connects and sends nothing,
or trickles its headers or its body a byte at a time, holds its connection (and, with a body, up to
GATEWAY_MAX_BODY_BYTES of memory) for as long as it likes; and httptools gathers every header value in memory
without a limit. This subclass adds:

- a deadline of GATEWAY_CLIENT_TIMEOUT seconds for a new connection to start a request, and a new one, from the
  request's first byte, to receive it completely. It runs only while the gateway waits for the client, never
  while the app works on a request it has received (a publish may take up to GATEWAY_PUBLISH_TIMEOUT). On
  expiry the request being received gets ``408`` and the connection is closed. A keep-alive connection idle
  after an answer is closed without one after GATEWAY_KEEPALIVE_TIMEOUT, set above a proxy's idle upstream
  timeout (README, "Configuration"), so that a proxy never sends a request on a connection being closed;
- a cap of GATEWAY_MAX_HEADER_BYTES on everything in a request that is not body (request line, headers, chunked
  framing, trailers): beyond it, ``431`` and close, before httptools has buffered more.

Both answers are counted in ``hookstream_gateway_requests_total``, like uvicorn's own ``400`` for bytes that are
not HTTP.

It also sends each response in one write: uvicorn writes a response's head and its body separately, two system
calls and two TCP segments, which were about a third of the gateway's main-thread samples (py-spy, bench/README.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, ClassVar, cast

import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.metrics import GatewayMetrics
from ops.settings import Settings

log = logging.getLogger(__name__)


class CoalescingTransport:
    """A connection's transport whose writes within one step of the event loop go out as one write, just after it.

    uvicorn's response cycle writes the head and the body of a response in the same step; everything else (flow
    control, addresses) is the transport's own. ``close`` sends what is held first, and so does ``flush`` (the
    protocol calls it when the client half-closes, before the transport closes itself); a step that writes more
    than ``MAX_HELD`` bytes sends them at once, so the transport's write back-pressure still applies.
    """

    MAX_HELD = 65_536

    __slots__ = ("_held", "_held_bytes", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > self.MAX_HELD:
            self.flush()

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Send what is held now."""
        held = self._held
        if held:
            self._held = []
            self._held_bytes = 0
            if not self._transport.is_closing():
                self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._held_bytes = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._held_bytes

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # our own slots, unset: not the transport's
            raise AttributeError(name)
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a receive deadline per request and a cap on non-body bytes per request."""

    client_timeout: ClassVar[float] = 10.0
    keepalive_timeout: ClassVar[float] = 75.0
    max_header_bytes: ClassVar[int] = 65_536
    metrics: ClassVar[GatewayMetrics | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._deadline: asyncio.TimerHandle | None = None
        self._budget = self.max_header_bytes  # non-body bytes the current request may still send
        self._in_message = False  # between the first byte of a request and its last
        self._headers_done = False  # the current request has its cycle: the app runs it (or will, if pipelined)

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CoalescingTransport(transport, self.loop)))
        self._arm()

    def eof_received(self) -> None:
        # The client half-closed: the transport closes itself when this returns, past the held bytes.
        cast(CoalescingTransport, self.transport).flush()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Every byte fed is charged to the budget first and body bytes are refunded by on_body, so the parser is
        # never fed more than the budget of non-body bytes at once. Bytes that arrive together with the end of
        # the previous request are charged to it, so a pipelined request may get up to twice the cap.
        while data:
            if self._budget <= 0:
                self._refuse(431, f"request headers larger than {self.max_header_bytes} bytes")
                return
            head, data = (data, b"") if len(data) <= self._budget else (data[: self._budget], data[self._budget :])
            self._budget -= len(head)
            super().data_received(head)
            if self.transport.is_closing():  # not HTTP (uvicorn answered 400), or answered and closing
                return

    def send_400_response(self, msg: str) -> None:
        self._count(400)
        super().send_400_response(msg)

    # Parser callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._headers_done = False
        if self._deadline is not None:  # idle until now: the request gets its own full time, not the idle rest
            self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._headers_done = True
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._budget += len(body)  # the body has its own limit, GATEWAY_MAX_BODY_BYTES, enforced by the app
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._budget = self.max_header_bytes
        self._disarm()
        super().on_message_complete()
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            self._arm(idle=True)  # answered before its body was in (404, 405): idle until the next request

    def on_response_complete(self) -> None:
        queued = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()  # starts the queued (pipelined) request, if any
        if self.transport.is_closing() or self._deadline is not None:
            return
        # Wait for the client unless the app now works on a request that is already complete: idle, or for the
        # rest of a request it is sending.
        if queued is None or (queued is self.cycle and self._in_message and self._headers_done):
            self._arm(idle=not self._in_message)

    # Limits

    def _arm(self, idle: bool = False) -> None:
        self._disarm()
        timeout = self.keepalive_timeout if idle else self.client_timeout
        self._deadline = self.loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if not self._in_message and self.cycle is not None:
            self.transport.close()  # idle after an answer: a keep-alive connection nobody uses
            return
        self._refuse(408, f"request not received within {self.client_timeout:g} s")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer the request being received with ``status`` and close, unless an answer is already under way."""
        log.debug("refused with %d: %s", status, reason)  # as Gateway._error logs the app's own refusals
        cycle = self.cycle
        if self._in_message and self._headers_done and all(cycle is not queued for queued, _ in self.pipeline):
            # The app holds this request, waiting for its body: tell it the client is gone, so it answers nothing.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # it answered already (before reading the body): only close
                self.transport.close()
                return
        elif cycle is not None and not cycle.response_complete:
            # Pipelined behind a request still being answered: finish the answers under way, then close.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        body = msgspec.json.encode({"error": reason})
        head = [STATUS_LINE[status]]
        head.extend(b"%b: %b\r\n" % header for header in self.server_state.default_headers)
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        self._count(status)

    def _count(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(str(status)).inc()


def guarded_protocol(settings: Settings, metrics: GatewayMetrics) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to give uvicorn (``http=``), bound to the gateway's limits and request counter."""

    class Protocol(GuardedHttpToolsProtocol):
        client_timeout = settings.gateway_client_timeout
        keepalive_timeout = settings.gateway_keepalive_timeout
        max_header_bytes = settings.gateway_max_header_bytes

    Protocol.metrics = metrics
    return Protocol
