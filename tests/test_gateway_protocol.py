"""The gateway's HTTP protocol sends each response in one write (gateway/protocol.py), driven in process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from bench.http_servers import app as no_work_app
from gateway.metrics import GatewayMetrics
from gateway.protocol import CoalescingTransport, GuardedHttpToolsProtocol, guarded_protocol
from ops.settings import Settings

REQUEST = b"POST /webhooks/stripe HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n{}"


class RecordingTransport(asyncio.Transport):
    """A connection that keeps what is written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _connected(transport: RecordingTransport) -> GuardedHttpToolsProtocol:
    """The gateway's protocol, serving the no-work app, connected to ``transport`` (call in a running loop)."""
    config = Config(app=no_work_app, lifespan="off", log_config=None, access_log=False)
    protocol = guarded_protocol(Settings.from_env({}), GatewayMetrics())(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.connection_made(transport)
    return protocol


async def _serve(requests: bytes, rounds: int = 20) -> RecordingTransport:
    transport = RecordingTransport()
    protocol = _connected(transport)
    protocol.data_received(requests)
    for _ in range(rounds):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport


def test_a_response_goes_out_in_one_write() -> None:
    transport = asyncio.run(_serve(REQUEST))
    assert len(transport.writes) == 1, transport.writes
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == b'{"ok":true}'


def test_pipelined_responses_keep_their_order() -> None:
    (one,) = asyncio.run(_serve(REQUEST)).writes
    assert b"".join(asyncio.run(_serve(REQUEST * 3)).writes) == one * 3  # each head followed by its body


def test_held_bytes_go_out_when_the_client_half_closes() -> None:
    """The transport closes itself after eof_received: what the protocol holds must be sent before that."""

    async def run() -> RecordingTransport:
        transport = RecordingTransport()
        protocol = _connected(transport)
        protocol.transport.write(b"an answer")
        protocol.eof_received()
        transport.close()  # what the event loop does when eof_received returns None
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport

    assert asyncio.run(run()).writes == [b"an answer"]


def test_a_large_write_is_not_held() -> None:
    async def run() -> RecordingTransport:
        transport = RecordingTransport()
        coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"head")
        coalescing.write(b"x" * (CoalescingTransport.MAX_HELD + 1))
        assert transport.writes == [b"head" + b"x" * (CoalescingTransport.MAX_HELD + 1)]  # at once: back-pressure
        await asyncio.sleep(0)
        return transport

    assert len(asyncio.run(run()).writes) == 1


def test_close_sends_what_is_held_and_abort_drops_it() -> None:
    async def run() -> tuple[RecordingTransport, RecordingTransport]:
        loop = asyncio.get_running_loop()
        closed, aborted = RecordingTransport(), RecordingTransport()
        for transport in (closed, aborted):
            coalescing = CoalescingTransport(transport, loop)
            coalescing.write(b"head ")
            coalescing.write(b"body")
            assert transport.writes == []  # held until the loop's step is over
            assert coalescing.get_write_buffer_size() == len(b"head body")
            coalescing.close() if transport is closed else coalescing.abort()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        return closed, aborted

    closed, aborted = asyncio.run(run())
    assert closed.writes == [b"head body"] and closed.closed
    assert aborted.writes == [] and aborted.aborted


def test_a_request_over_the_header_cap_is_refused_431_and_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """README: refused requests are logged at LOG_LEVEL=DEBUG, the protocol's own 408 and 431 as the app's."""
    cap = Settings.from_env({}).gateway_max_header_bytes
    oversized = b"POST /webhooks/stripe HTTP/1.1\r\nx-pad: " + b"a" * cap + b"\r\n\r\n"
    with caplog.at_level(logging.DEBUG, logger="gateway.protocol"):
        transport = asyncio.run(_serve(oversized))
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 431 ") and transport.closed
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.protocol"] == [
        f"refused with 431: request headers larger than {cap} bytes"
    ]
