"""Hostile clients at the gateway, against a real gateway process and broker.

Forged, stale, replayed and malformed deliveries never get a 200 (stripe-python's ``verify_header`` is the
independent judge of a signature) and every answer is a documented one; slow clients are answered 408 and dropped
after GATEWAY_CLIENT_TIMEOUT while genuine deliveries keep flowing; header blocks over GATEWAY_MAX_HEADER_BYTES get
431; memory stays bounded. Bodies over the limit (413) are covered in test_gateway_inputs.py.
"""

from __future__ import annotations

import gzip
import json
import selectors
import socket
import string
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.signature import sign
from ops.broker import EmbeddedBroker
from ops.fixtures import build_event, encode
from ops.process import free_port
from tests.support import SECRET, WEBHOOK, BrokerInfo, GatewayProcess, consume, start_gateway

pytestmark = pytest.mark.integration

CLIENT_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 4.0  # longer: an idle keep-alive connection is kept past the client timeout
MAX_HEADER = 16 * 1024
MAX_BODY = 256 * 1024
TOLERANCE = 300
#: The answers README.md documents for POST /webhooks/stripe.
DOCUMENTED = {200, 400, 408, 413, 431, 503}
#: Slow connections must be gone well within this many seconds (the deadline plus generous slack).
CLOSED_WITHIN = 3 * CLIENT_TIMEOUT
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def gw(broker: BrokerInfo) -> Iterator[GatewayProcess]:
    with start_gateway(
        broker,
        GATEWAY_CLIENT_TIMEOUT=str(CLIENT_TIMEOUT),
        GATEWAY_KEEPALIVE_TIMEOUT=str(KEEPALIVE_TIMEOUT),
        GATEWAY_MAX_HEADER_BYTES=str(MAX_HEADER),
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY),
        STRIPE_WEBHOOK_TOLERANCE=str(TOLERANCE),
        TOPIC_PREFIX="hostile.",
    ) as process:
        yield process


def _event(event_id: str) -> bytes:
    return encode(build_event("payment_intent.succeeded", event_id=event_id, object_id=f"pi_{event_id}"))


def _alive(gw: GatewayProcess) -> None:
    assert gw.process.poll() is None, gw.output()[-3000:]
    assert gw.request("GET", "/healthz", timeout=5).status == 200


# Raw HTTP: exact bytes out, answers parsed by hand (http.client refuses to send much of what is sent here).


def _request(body: bytes, headers: list[tuple[bytes, bytes]], chunks: list[int] | None = None) -> bytes:
    """A POST to the webhook with ``headers``, its body framed by Content-Length or, with ``chunks``, chunked."""
    lines = [b"POST " + WEBHOOK.encode() + b" HTTP/1.1", b"Host: hookstream", *(n + b": " + v for n, v in headers)]
    if chunks is None:
        lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body
    lines.append(b"Transfer-Encoding: chunked")
    framed, rest = [], body
    for size in chunks:
        if not rest:
            break
        framed.append(b"%x\r\n%b\r\n" % (len(rest[:size]), rest[:size]))
        rest = rest[size:]
    if rest:
        framed.append(b"%x\r\n%b\r\n" % (len(rest), rest))
    return b"\r\n".join(lines) + b"\r\n\r\n" + b"".join(framed) + b"0\r\n\r\n"


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def _read_answer(sock: socket.socket, buffer: bytearray) -> Answer | None:
    """One response (the gateway always sends Content-Length); None when the connection ends before it."""
    try:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                return None
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                return None
            rest += data
    except ConnectionResetError:
        return None
    buffer[:] = rest[length:]
    return Answer(int(status_line.split()[1]), headers, rest[:length])


class Connection:
    """A keep-alive connection to the gateway, reopened when the gateway closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def exchange(self, request: bytes) -> Answer:
        # An idle connection may be closed by the deadline just as a request goes out: then once more, afresh.
        for _ in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=15)
            try:
                self.sock.sendall(request)
                answer = _read_answer(self.sock, self.buffer)
            except (BrokenPipeError, ConnectionResetError):
                answer = None
            if answer is None or answer.headers.get(b"connection") == b"close":
                self.close()
            if answer is not None:
                return answer
        raise AssertionError("the gateway closed two connections without answering")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buffer.clear()


# The property: no 200 unless stripe-python accepts the signature of the body the gateway received.


def _stripe_accepts(body: bytes, header: bytes) -> bool:
    """stripe-python's verdict on one Stripe-Signature value (as HTTP delivers it: surrounding blanks removed)."""
    try:
        stripe.WebhookSignature.verify_header(body, header.strip(b" \t").decode("latin-1"), SECRET, TOLERANCE)
    except (stripe.SignatureVerificationError, UnicodeDecodeError):  # Stripe signs text: bytes that are not UTF-8
        return False
    return True


@dataclass
class Delivery:
    body: bytes  # as the gateway receives it (after de-chunking; Content-Encoding is not undone)
    signatures: list[bytes]  # Stripe-Signature values, in the order sent
    request: bytes
    routable: bool  # an untouched event, received as sent: accepted whenever its one signature is valid
    framing: str
    event_id: str = ""


_ids = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=24)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_header_text = st.binary(max_size=160).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def _payloads(draw: st.DrawFn, genuine: bool) -> tuple[bytes, bool, str]:
    """A body, whether it is an untouched routable event, and its event id ("" when it has none or a mangled one)."""
    event_id = "evt_" + draw(_ids)
    event = build_event(
        draw(st.sampled_from(["payment_intent.succeeded", "invoice.paid", "customer.subscription.updated"])),
        event_id=event_id,
        object_id="obj_" + draw(_ids),
    )
    event["data"]["object"]["metadata"] = {"note": draw(st.text(max_size=30))}
    body = json.dumps(event, ensure_ascii=draw(st.booleans())).encode()
    kind = "event" if genuine else draw(st.sampled_from(["binary", "not_utf8", "wrong_shape", "nested", "huge_number"]))
    if kind == "event":
        return body, True, event_id
    if kind == "binary":
        return draw(st.binary(max_size=2048)), False, ""
    if kind == "not_utf8":
        at = draw(st.integers(0, len(body)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        return body[:at] + bad + body[at:], False, event_id
    if kind == "wrong_shape":
        path = draw(st.sampled_from([("id",), ("type",), ("data",), ("data", "object"), ("data", "object", "object")]))
        target = event
        for key in path[:-1]:
            target = target[key]
        if draw(st.booleans()):
            del target[path[-1]]
        else:
            target[path[-1]] = draw(_json_values)
        if draw(st.booleans()):
            return json.dumps(draw(_json_values)).encode(), False, ""
        return json.dumps(event).encode(), False, "" if path == ("id",) else event_id
    if kind == "nested":
        depth = draw(st.integers(1, 20_000))
        opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        nested = opening * depth + b"1" + closing * depth
        if draw(st.booleans()):
            return nested, False, ""
        return body[:-1] + b', "deep": ' + nested + b"}", False, event_id
    digits = draw(st.integers(20, 20_000))
    number = draw(st.sampled_from([b"", b"-"])) + b"9" * digits + draw(st.sampled_from([b"", b".5", b"e999999"]))
    field_name = draw(st.sampled_from([b'"amount"', b'"created"']))
    return body[:-1] + b", " + field_name + b": " + number + b"}", False, event_id


@st.composite
def _signature_values(draw: st.DrawFn, signed: bytes, other: bytes, now: int, genuine: bool = False) -> bytes:
    """One Stripe-Signature value: valid, stale, future, for another body or secret, mangled, or random."""
    kinds = ["valid", "future"] if genuine else ["valid", "stale", "other_body", "other_secret", "mangled", "random"]
    kind = draw(st.sampled_from(kinds))
    if kind == "valid":
        return sign(signed, SECRET, now - draw(st.integers(0, TOLERANCE - 30))).encode()
    if kind == "future":
        return sign(signed, SECRET, now + draw(st.integers(1, 10**9))).encode()
    if kind == "stale":
        return sign(signed, SECRET, now - draw(st.integers(TOLERANCE + 30, 10**9))).encode()
    if kind == "other_body":
        return sign(other, SECRET, now).encode()
    if kind == "other_secret":
        return sign(signed, "whsec_" + draw(_ids), now).encode()
    if kind == "random":
        return draw(_header_text)
    valid = sign(signed, SECRET, now).encode()
    mangle = draw(
        st.sampled_from(["flip", "truncate", "upper", "spaces", "scheme", "t_late", "wrong_first", "t_twice"])
    )
    if mangle == "flip":
        at = draw(st.integers(valid.index(b"v1=") + 3, len(valid) - 1))
        return valid[:at] + (b"0" if valid[at : at + 1] != b"0" else b"1") + valid[at + 1 :]
    if mangle == "truncate":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if mangle == "upper":
        return valid.upper()
    if mangle == "spaces":
        return valid.replace(b",", b", ")
    if mangle == "scheme":
        return valid.replace(b"v1=", draw(st.sampled_from([b"v0=", b"V1=", b"v2=", b"v1 ="])))
    if mangle == "t_late":  # the timestamp after the signatures
        t, v1 = valid.split(b",")
        return v1 + b"," + t
    if mangle == "wrong_first":
        return valid.replace(b"v1=", b"v1=" + b"0" * 64 + b",v1=")
    return b"t=%d," % (now - 10 * TOLERANCE) + valid  # two timestamps: the first (stale) one counts


@st.composite
def _deliveries(draw: st.DrawFn) -> Delivery:
    """A third are genuine deliveries (a validly signed event, plainly framed), the rest anything but."""
    now = int(time.time())
    genuine = draw(st.sampled_from([True, False, False]))
    payload, routable, event_id = draw(_payloads(genuine))
    framings = ["length", "chunked"] + ([] if genuine else ["gzip", "gzip_chunked", "utf-16", "latin-1", "both"])
    framing = draw(st.sampled_from(framings))
    body, headers, chunks = payload, [], None
    content_type = draw(
        st.sampled_from(
            [
                None,
                b"application/json",
                b"application/json; charset=utf-8",
                b"application/json;charset=UTF-8",
                b"text/plain",
                b"application/x-www-form-urlencoded",
                b"multipart/form-data; boundary=x",
            ]
        )
    )
    if framing.startswith("gzip"):
        body = gzip.compress(payload)
        headers.append((b"Content-Encoding", b"gzip"))
    elif framing in ("utf-16", "latin-1"):
        try:
            body = payload.decode("utf-8").encode(framing)
            content_type = b"application/json; charset=" + framing.encode()
        except UnicodeError:
            framing = "length"
    if framing in ("chunked", "gzip_chunked", "both"):
        chunks = draw(st.lists(st.integers(1, 4096), min_size=1, max_size=8))
    if framing == "both":  # Content-Length and chunked at once: ambiguous framing (request smuggling)
        headers.append((b"Content-Length", b"%d" % len(body)))
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    # What was signed: what arrives, what it was before encoding, or something else entirely
    signed = draw(st.sampled_from([body, payload]))
    other = _event("evt_other_" + draw(_ids))
    if genuine:
        signatures = [draw(_signature_values(signed, other, now, genuine=True))]
    else:
        signatures = draw(
            st.lists(_signature_values(signed, other, now) | _signature_values(signed, other, now, True), max_size=3)
        )
    name = draw(st.sampled_from([b"Stripe-Signature", b"stripe-signature", b"STRIPE-SIGNATURE"]))
    headers = [(name, value) for value in signatures] + headers
    draw(st.randoms()).shuffle(headers)  # where the signature sits among the other headers must not matter
    return Delivery(body, signatures, _request(body, headers, chunks), routable and body == payload, framing, event_id)


def test_no_200_unless_stripe_would_accept_the_signature(gw: GatewayProcess) -> None:
    connection = Connection(gw.port)
    seen: dict[int, int] = {}

    @settings(max_examples=300, deadline=None)
    @given(delivery=_deliveries())
    def check(delivery: Delivery) -> None:
        answer = connection.exchange(delivery.request)
        seen[answer.status] = seen.get(answer.status, 0) + 1
        assert answer.status in DOCUMENTED, (answer.status, answer.body[:300])
        accepted = any(_stripe_accepts(delivery.body, value) for value in delivery.signatures)
        if answer.status == 200:
            assert accepted, "200 for a delivery stripe-python refuses"
            reply = json.loads(answer.body)
            assert reply["received"] is True and reply["id"] == (delivery.event_id or reply["id"]), reply
        else:
            assert answer.body, "every refusal says why"
        if delivery.framing == "both":
            assert answer.status == 400, "Content-Length together with chunked must be refused"
        elif accepted and delivery.routable and len(delivery.signatures) == 1:
            assert answer.status == 200, answer.body  # and a genuine delivery is never refused

    try:
        check()
    finally:
        connection.close()
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen  # both sides of the property were exercised
    _alive(gw)


def test_replayed_delivery_past_the_tolerance_is_refused(broker: BrokerInfo) -> None:
    with start_gateway(broker, STRIPE_WEBHOOK_TOLERANCE="2", TOPIC_PREFIX="replay.") as gw:
        body = _event("evt_replayed")
        header = sign(body, SECRET).encode()
        request = _request(body, [(b"Stripe-Signature", header)])
        connection = Connection(gw.port)
        assert connection.exchange(request).status == 200
        time.sleep(3)  # the captured bytes grow older than the 2 s tolerance
        before = gw.metric("hookstream_gateway_signature_failures_total", reason="timestamp_outside_tolerance")
        replay = connection.exchange(request)
        connection.close()
        assert replay.status == 400
        assert "older than the tolerance" in json.loads(replay.body)["error"]
        assert not _stripe_accepts_with_tolerance(body, header, 2)  # stripe-python refuses it too
        assert gw.metric("hookstream_gateway_signature_failures_total", reason="timestamp_outside_tolerance") == (
            before + 1
        )
        records = consume(broker.bootstrap_servers, ["replay.payment_intent"], 1)
        assert [r.value for r in records if r.key == b"pi_evt_replayed"] == [body]  # stored once


def _stripe_accepts_with_tolerance(body: bytes, header: bytes, tolerance: int) -> bool:
    try:
        stripe.WebhookSignature.verify_header(body, header.decode(), SECRET, tolerance)
    except stripe.SignatureVerificationError:
        return False
    return True


# Slow and oversized clients, driven from one thread while genuine deliveries go through another connection.


@dataclass(eq=False)
class SlowClient:
    """A connection that sent its first bytes at once and trickles the rest one byte per second."""

    sock: socket.socket
    trickle: bytes
    opened: float = field(default_factory=time.monotonic)
    answer: bytes = b""
    closed_after: float | None = None  # seconds from opening until the gateway closed it


def _open(port: int, burst: bytes = b"", trickle: bytes = b"") -> SlowClient:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = SlowClient(sock, trickle)
    if burst:
        try:
            sock.sendall(burst)
        except OSError:  # refused and closed before all of it was sent
            pass
    sock.setblocking(False)
    return client


def _drive(clients: list[SlowClient], give_up: float) -> None:
    """Trickle and read until the gateway has closed every connection, or ``give_up`` seconds have passed."""
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    waiting = set(clients)
    end = time.monotonic() + give_up
    next_tick = time.monotonic() + 1.0
    try:
        while waiting and time.monotonic() < end:
            for key, _ in selector.select(timeout=max(0.0, min(next_tick, end) - time.monotonic())):
                client = key.data
                try:
                    data = client.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset: the gateway closed while bytes were still coming
                    data = b""
                if data:
                    client.answer += data
                    continue
                client.closed_after = time.monotonic() - client.opened
                selector.unregister(client.sock)
                waiting.discard(client)
            if time.monotonic() >= next_tick:
                next_tick += 1.0
                for client in waiting:
                    if client.trickle:
                        try:
                            client.trickle = client.trickle[client.sock.send(client.trickle[:1]) :]
                        except OSError:  # closed by the gateway: the read side sees it
                            pass
    finally:
        selector.close()
        for client in clients:
            client.sock.close()


def _deliver_while(gw: GatewayProcess, attack: threading.Thread, prefix: str) -> list[tuple[int, float]]:
    """Genuine signed deliveries, one after another, for as long as ``attack`` runs: (status, time answered)
    each."""
    results = []
    while attack.is_alive():
        response = gw.post_event(_event(f"{prefix}_{len(results)}"), timeout=15)
        results.append((response.status, time.monotonic()))
        time.sleep(0.05)
    return results


def _assert_served(results: list[tuple[int, float]], slow: list[SlowClient]) -> None:
    """Every delivery published, and deliveries answered while every slow connection was still held: served
    beside the slow clients, not after the gateway let them go."""
    assert {status for status, _ in results} == {200}, results
    first_closed = min(c.opened + c.closed_after for c in slow if c.closed_after is not None)
    assert sum(answered < first_closed for _, answered in results) >= 2, (results, first_closed)


def test_slow_clients_get_408_while_deliveries_keep_flowing(gw: GatewayProcess) -> None:
    before = gw.metric("hookstream_gateway_requests_total", status="408")
    published_before = gw.metric(
        "hookstream_events_published_total", topic="hostile.payment_intent", event_type="payment_intent.succeeded"
    )
    idle = [_open(gw.port) for _ in range(220)]
    header_head = b"POST " + WEBHOOK.encode() + b" HTTP/1.1\r\nHost: hookstream\r\nX-Slow: "
    headers = [_open(gw.port, header_head, b"a" * 100) for _ in range(20)]
    bodies = []
    for i in range(20):
        body = _event(f"evt_slow_body_{i}")
        request = _request(body, [(b"Stripe-Signature", sign(body, SECRET).encode())])
        bodies.append(_open(gw.port, request[: -len(body) + 10], request[-len(body) + 10 :]))
    slow = idle + headers + bodies
    attack = threading.Thread(target=_drive, args=(slow, CLOSED_WITHIN + 2))
    attack.start()
    results = _deliver_while(gw, attack, "evt_during_slowloris")
    attack.join()

    _assert_served(results, slow)
    for client in slow:
        assert client.closed_after is not None, "a slow connection was still open"
        assert CLIENT_TIMEOUT * 0.9 <= client.closed_after < CLOSED_WITHIN, client.closed_after
    for client in idle:  # nothing sent, so nothing races the answer
        assert client.answer.startswith(b"HTTP/1.1 408 "), client.answer[:100]
        assert b'"error":"request not received within 2 s"' in client.answer
    for client in headers + bodies:  # a byte trickled just as the gateway closes can reset the connection
        assert client.answer == b"" or client.answer.startswith(b"HTTP/1.1 408 "), client.answer[:100]
    assert gw.metric("hookstream_gateway_requests_total", status="408") == before + len(slow)
    published = gw.metric(
        "hookstream_events_published_total", topic="hostile.payment_intent", event_type="payment_intent.succeeded"
    )
    assert published == published_before + len(results)  # no trickled body was published
    _alive(gw)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_memory_stays_bounded_under_large_slow_requests(gw: GatewayProcess) -> None:
    """Many connections each holding a body just under the limit, and many sending header blocks of 2 MiB."""
    for i in range(5):
        assert gw.post_event(_event(f"evt_warm_{i}")).status == 200
    before_408 = gw.metric("hookstream_gateway_requests_total", status="408")
    before_431 = gw.metric("hookstream_gateway_requests_total", status="431")
    baseline = peak = _rss_bytes(gw.process.pid)
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, _rss_bytes(gw.process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # the oversized first (refused at once), the large last: their client timeout runs from their opening,
        # and the deliveries go while it runs (opened first, a slow machine's 60 sends of 2 MiB ate it)
        head = b"POST " + WEBHOOK.encode() + b" HTTP/1.1\r\nHost: hookstream\r\n"
        block = b"".join(b"X-Pad-%d: %b\r\n" % (i, b"a" * 8000) for i in range(2 * MIB // 8000))
        oversized = [_open(gw.port, head + block) for _ in range(60)]
        large = []
        for i in range(60):
            body = _event(f"evt_large_{i}")[:-1] + b',"pad":"' + b"x" * MAX_BODY + b'"}'
            body = body[: MAX_BODY - 1]
            request = _request(body, [(b"Stripe-Signature", sign(body, SECRET).encode())])
            large.append(_open(gw.port, request[:-64], request[-64:]))
        attack = threading.Thread(target=_drive, args=(large + oversized, CLOSED_WITHIN + 2))
        attack.start()
        results = _deliver_while(gw, attack, "evt_during_large")
        attack.join()
    finally:
        sampling = False
        sampler.join()

    _assert_served(results, large)  # the oversized are refused at once
    assert peak - baseline < 100 * MIB, f"RSS grew by {(peak - baseline) / MIB:.0f} MiB"
    assert all(client.closed_after is not None for client in large + oversized), "a connection was still open"
    assert gw.metric("hookstream_gateway_requests_total", status="408") == before_408 + len(large)
    assert gw.metric("hookstream_gateway_requests_total", status="431") == before_431 + len(oversized)
    _alive(gw)


def test_header_block_over_the_cap_gets_431_and_one_under_it_is_read(gw: GatewayProcess) -> None:
    before = gw.metric("hookstream_gateway_requests_total", status="431")
    pad = (b"X-Pad", b"a" * (MAX_HEADER - 1024))
    connection = Connection(gw.port)
    under = connection.exchange(_request(b"{}", [pad, (b"Stripe-Signature", b"t=1,v1=00")]))
    connection.close()
    assert under.status == 400 and b"signature" in under.body  # read and judged, not refused for its size

    over = _request(b"{}", [(b"X-Pad-%d" % i, b"a" * 1000) for i in range(3 * MAX_HEADER // 1000)])
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        try:
            sock.sendall(over)
        except OSError:
            pass
        answer = _read_answer(sock, bytearray())
        # the gateway closes with bytes unread, which may reset the connection before the answer is read
        assert answer is None or (answer.status == 431 and b"larger than 16384 bytes" in answer.body), answer
        assert answer is None or sock.recv(1) == b""  # closed
    assert gw.metric("hookstream_gateway_requests_total", status="431") == before + 1
    _alive(gw)


def test_keep_alive_is_served_in_order_then_closed_quietly_when_idle(gw: GatewayProcess) -> None:
    """Two pipelined deliveries on one connection both get their 200; the idle connection then closes without a
    408 (nothing was asked), after GATEWAY_KEEPALIVE_TIMEOUT, not the shorter client timeout: a proxy keeping idle
    upstream connections for less than that never sends a delivery on a connection being closed."""
    before = gw.metric("hookstream_gateway_requests_total", status="408")
    first, second = _event("evt_pipelined_1"), _event("evt_pipelined_2")
    requests = b"".join(
        _request(body, [(b"Stripe-Signature", sign(body, SECRET).encode())]) for body in (first, second)
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=KEEPALIVE_TIMEOUT + CLOSED_WITHIN) as sock:
        # timed from before the gateway could arm its timer (after the answer, a pause of this process would
        # shorten the measured wait: GC, a loaded machine)
        sent = time.monotonic()
        sock.sendall(requests)
        buffer = bytearray()
        answers = [_read_answer(sock, buffer), _read_answer(sock, buffer)]
        assert [(a.status, json.loads(a.body)["id"]) for a in answers if a is not None] == [
            (200, "evt_pipelined_1"),
            (200, "evt_pipelined_2"),
        ]
        idle_for = _closed_quietly_after(sock, buffer, sent)
    assert KEEPALIVE_TIMEOUT * 0.9 <= idle_for < KEEPALIVE_TIMEOUT + CLOSED_WITHIN, idle_for
    assert gw.metric("hookstream_gateway_requests_total", status="408") == before


def _closed_quietly_after(sock: socket.socket, buffer: bytearray, since: float) -> float:
    """Seconds from ``since`` until the gateway closed ``sock`` without a word (before the socket's timeout)."""
    assert sock.recv(1024) == b"" and not buffer
    return time.monotonic() - since


def test_a_connection_answered_before_its_body_came_gets_the_client_timeout_for_it_then_the_keep_alive_one(
    gw: GatewayProcess,
) -> None:
    """A request to another path is answered (404) before its body is in: the client still has the client timeout to
    send the rest (one that never does is closed then, quietly: it was answered), and once it has, the connection
    idles as after any answer (GATEWAY_KEEPALIVE_TIMEOUT)."""
    head = b"POST /elsewhere HTTP/1.1\r\nHost: hookstream\r\nContent-Length: 5\r\n\r\n"
    timeout = KEEPALIVE_TIMEOUT + CLOSED_WITHIN
    with (
        socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sending,
        socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as silent,
    ):
        buffers = {sock: bytearray() for sock in (sending, silent)}
        began = time.monotonic()  # before the gateway could arm a timer: see the keep-alive test
        for sock, buffer in buffers.items():
            sock.sendall(head)
            answer = _read_answer(sock, buffer)
            assert answer is not None and answer.status == 404
        sent = time.monotonic()
        sending.sendall(b"12345")
        body_wait = _closed_quietly_after(silent, buffers[silent], began)  # the body never came
        since_answers = time.monotonic() - sent  # from after its timer was armed: no longer than its wait
        idle_for = _closed_quietly_after(sending, buffers[sending], sent)
    assert CLIENT_TIMEOUT * 0.9 <= body_wait, body_wait  # not sooner than the client timeout
    assert since_answers < KEEPALIVE_TIMEOUT * 0.9, since_answers  # nor the keep-alive one
    assert KEEPALIVE_TIMEOUT * 0.9 <= idle_for < KEEPALIVE_TIMEOUT + CLOSED_WITHIN, idle_for


def test_a_pipelined_request_still_coming_when_the_one_before_is_answered_gets_the_client_timeout(
    gw: GatewayProcess,
) -> None:
    """The request after a delivery arrives while the delivery is published (no deadline: the app works), and its
    body stops short. Once the delivery is answered, the gateway waits for the rest for the client timeout, not the
    keep-alive one (nothing here is idle), then answers 408."""
    body = _event("evt_pipelined_then_stuck")
    delivery = _request(body, [(b"Stripe-Signature", sign(body, SECRET).encode())])
    stuck = b"POST /webhooks/stripe HTTP/1.1\r\nHost: hookstream\r\nContent-Length: 5\r\n\r\n12"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=KEEPALIVE_TIMEOUT + CLOSED_WITHIN) as sock:
        sent = time.monotonic()  # before the gateway could arm its timer: see the keep-alive test
        sock.sendall(delivery + stuck)
        buffer = bytearray()
        first = _read_answer(sock, buffer)
        assert first is not None and first.status == 200
        answered = time.monotonic()  # after the gateway armed its timer: the wait from here is no longer than it
        second = _read_answer(sock, buffer)
        waited, since_answer = time.monotonic() - sent, time.monotonic() - answered
    assert second is not None and second.status == 408
    assert CLIENT_TIMEOUT * 0.9 <= waited, waited  # not sooner than the client timeout
    assert since_answer < KEEPALIVE_TIMEOUT * 0.9, since_answer  # nor the keep-alive one


def test_the_deadline_never_cuts_a_publish_in_progress() -> None:
    """Receiving has a deadline, working on a received request has not: a publish the broker does not acknowledge
    runs its full GATEWAY_PUBLISH_TIMEOUT (longer than the client timeout) and ends in 503, not 408."""
    with EmbeddedBroker(free_port()) as broker:
        info = BrokerInfo(broker.bootstrap_servers, enable_idempotence=False)
        with start_gateway(info, GATEWAY_CLIENT_TIMEOUT="1", GATEWAY_PUBLISH_TIMEOUT="3") as gw:
            assert gw.post_event(_event("evt_before_outage")).status == 200
            broker.stop()
            started = time.monotonic()
            response = gw.post_event(_event("evt_during_outage"), timeout=20)
            waited = time.monotonic() - started
            assert response.status == 503, response.body
            assert waited > 1.5, "the publish did not outlast the client timeout: nothing was shown"
            assert gw.metric("hookstream_gateway_requests_total", status="408") == 0
