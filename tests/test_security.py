"""Security hygiene (issue 6, point 5), each promise checked against real processes where one is involved:

- no webhook secret, Stripe-Signature, event body or Kafka password in a gateway's or worker's output, at the
  default log level and at DEBUG, whatever the traffic (valid, forged, broken, poison, not JSON at all);
- secrets come from the environment or mounted files, never from a long-running command's arguments;
- the worker's web endpoints (/objects, /metrics) can be bound to one interface;
- ``make lint``'s dependency audit fails on a known vulnerability and never reports unchecked packages as clean.

The chart's side (non-root, read-only root file system, NetworkPolicy, WORKER_WEB_BIND) is in test_chart.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.envelope import Record, to_record
from gateway.signature import sign
from ops import cli
from ops.broker import recv_exactly
from ops.fixtures import build_event, encode
from ops.process import free_port, stop_process
from ops.settings import Settings
from streams.registry import HandlerRegistry
from tests.support import (
    REPO,
    BrokerInfo,
    ConsumedRecord,
    DictStore,
    consume,
    processor,
    produce,
    start_gateway,
    start_worker,
    wait_for,
)

HANDLERS = "tests.handlers.recording,tests.handlers.leaky"


def _unique(name: str) -> tuple[str, str]:
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    return f"hs-{tag}", f"t{tag}."


def _lines_with(text: str, needle: str) -> str:
    """The lines of ``text`` holding ``needle``, for a failure message (never the whole output)."""
    return "\n".join(line[:300] for line in text.splitlines() if needle in line)[:3000]


# ---------------------------------------------------------------------------------------------------------------
# (a) nothing secret in the logs


@dataclass
class Traffic:
    """What one run sent, and what must therefore never show up in a process's output."""

    forbidden: dict[str, str] = field(default_factory=dict)
    gateway_output: str = ""
    worker_output: str = ""
    dead_letters: list[bytes] = field(default_factory=list)
    leaky_event_id: str = ""


def _charge(prefix: str, object_id: str, seq: int, marker: str, fail: bool = False) -> bytes:
    metadata = {"seq": str(seq), "note": marker} | ({"fail": "true"} if fail else {})
    event = build_event(
        "charge.updated",
        object_id=object_id,
        created=1_790_000_000 + seq,
        object_fields={"metadata": metadata, "description": marker, "amount": 100 + seq},
    )
    return encode(event)


def _drive(broker: BrokerInfo, tmp_path: Path, log_level: str) -> Traffic:
    """Run a gateway and a worker at ``log_level`` with secrets from mounted files, send every kind of traffic
    through them, stop them, and return their output."""
    app_id, prefix = _unique(f"sec-{log_level.lower()}")
    traffic = Traffic()
    secret, old_secret = f"whsec_current{uuid.uuid4().hex}", f"whsec_previous{uuid.uuid4().hex}"
    password = f"kafka-password-{uuid.uuid4().hex}"
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"
    traffic.forbidden |= {"webhook secret": secret, "older webhook secret": old_secret, "SASL password": password}
    traffic.forbidden["body marker"] = marker
    secrets_file, password_file = tmp_path / "webhook-secrets", tmp_path / "kafka-password"
    secrets_file.write_text(f"{secret},{old_secret}\n")
    password_file.write_text(password + "\n")
    env = {
        "LOG_LEVEL": log_level,
        "TOPIC_PREFIX": prefix,
        "STRIPE_WEBHOOK_SECRETS_FILE": str(secrets_file),
        # PLAINTEXT: the clients ignore SASL settings, so the password is configured but connecting still works
        "KAFKA_SASL_USERNAME": "hookstream",
        "KAFKA_SASL_PASSWORD_FILE": str(password_file),
    }

    signatures: list[str] = []

    def post(gateway: Any, body: bytes, signature: str | None, expected: int) -> None:
        headers = {"Stripe-Signature": signature} if signature is not None else {}
        if signature is not None:
            signatures.append(signature)
        answer = gateway.request("POST", "/webhooks/stripe", body, headers)
        assert answer.status == expected, (answer.status, answer.body)

    with start_gateway(broker, **env) as gateway:
        for seq in range(3):  # valid: published, then applied
            post(gateway, body := _charge(prefix, "ch_ok", seq, marker), sign(body, secret), 200)
        post(gateway, body := _charge(prefix, "ch_ok_old", 0, marker), sign(body, old_secret), 200)
        poison = _charge(prefix, "ch_poison", 0, marker, fail=True)  # the handler fails: retried, dead-lettered
        post(gateway, poison, sign(poison, secret), 200)
        leaky_event = build_event(
            "customer.updated", object_id="cus_leaky", object_fields={"description": marker, "name": marker}
        )
        traffic.leaky_event_id = leaky_event["id"]
        post(gateway, leaky := encode(leaky_event), sign(leaky, secret), 200)
        forged = _charge(prefix, "ch_forged", 0, marker)
        post(gateway, forged, sign(forged, f"whsec_attacker{uuid.uuid4().hex}"), 400)  # wrong secret
        post(gateway, forged, sign(forged, secret, timestamp=int(time.time()) - 3600), 400)  # too old
        post(gateway, forged, sign(forged + b" ", secret), 400)  # signature of another body
        garbage_token = uuid.uuid4().hex
        post(gateway, forged, f"t=yesterday,v1={garbage_token}", 400)  # malformed header
        traffic.forbidden["malformed signature header"] = garbage_token
        post(gateway, forged, None, 400)  # no signature at all
        broken = b'{"id": "evt_broken", "type": "charge.updated", "note": "' + marker.encode() + b'", "data": {'
        post(gateway, broken, sign(broken, secret), 400)  # signed, but not JSON
        not_event = b'{"note": "' + marker.encode() + b'"}'
        post(gateway, not_event, sign(not_event, secret), 400)  # signed JSON, but not an event
        assert gateway.metric("hookstream_gateway_signature_failures_total", reason="no_matching_signature") >= 2
        stop_process(gateway.process, timeout=20)  # its shutdown logs count too
        traffic.gateway_output = gateway.output()

    for signature in signatures:
        traffic.forbidden[f"Stripe-Signature {signature[:24]}..."] = signature
        traffic.forbidden[f"v1 of {signature[:24]}..."] = signature.rsplit("v1=", 1)[-1]

    # A record that never went through the gateway, and is not JSON: straight to the topic.
    raw = Record(prefix + "charge", b"ch_raw", b"not json at all " + marker.encode(), [], "", "")
    produce(broker.bootstrap_servers, [raw], enable_idempotence=broker.enable_idempotence)

    worker_env = {**env, "HOOKSTREAM_HANDLERS": HANDLERS, "HANDLER_MAX_ATTEMPTS": "2", "HANDLER_RETRY_BACKOFF": "0.05"}
    with start_worker(broker, app_id, prefix, **worker_env) as worker:
        wait_for(
            lambda: (
                worker.metric_sum("hookstream_events_processed_total", outcome="ok") >= 4
                and worker.metric_sum("hookstream_events_processed_total", outcome="dead_lettered") >= 3
            ),
            90,
            "valid events applied, poison ones dead-lettered",
        )
        # exactly: 4 applied; the poison, the leaky and the raw record dead-lettered, the first two after a retry
        outcomes = ("ok", "dead_lettered", "retried", "duplicate", "stale", "unhandled")
        finished = {o: worker.metric_sum("hookstream_events_processed_total", outcome=o) for o in outcomes}
        assert finished == {"ok": 4, "dead_lettered": 3, "retried": 2, "duplicate": 0, "stale": 0, "unhandled": 0}
        state = worker.state("ch_ok")
        assert state is not None and state["fields"]["seqs"] == [0, 1, 2]
        traffic.dead_letters = [r.value for r in consume(broker.bootstrap_servers, [prefix + "dlq"], 3)]
        worker.stop()
        traffic.worker_output = worker.output()
    return traffic


@pytest.mark.integration
@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
def test_no_secret_signature_or_body_in_any_output(broker: BrokerInfo, tmp_path: Path, log_level: str) -> None:
    traffic = _drive(broker, tmp_path, log_level)

    # The bodies went through the worker's Kafka producer (aiokafka logs every value it sends at DEBUG)...
    assert len(traffic.dead_letters) == 3
    assert all(traffic.forbidden["body marker"].encode() in value for value in traffic.dead_letters)
    # ...and the dead-lettering log line this test is about was written.
    dead_lettered = [line for line in traffic.worker_output.splitlines() if traffic.leaky_event_id in line]
    assert dead_lettered and "ValueError" in dead_lettered[0], traffic.worker_output[-3000:]
    for process, output in (("gateway", traffic.gateway_output), ("worker", traffic.worker_output)):
        # something was logged, at the level asked for (DEBUG lines only at DEBUG): else the check is vacuous
        assert output.strip(), f"the {process} printed nothing"
        assert ("DEBUG" in output) == (log_level == "DEBUG"), f"{process}:\n{output[-3000:]}"
        for what, value in traffic.forbidden.items():
            assert value not in output, (
                f"{what} in the {process}'s output at {log_level}:\n{_lines_with(output, value)}"
            )


def _dead_letter_once(
    handlers: HandlerRegistry, store: DictStore, marker: str, caplog: pytest.LogCaptureFixture
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Process one event carrying ``marker`` that must end as a dead letter; return the letter's value, headers."""
    sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    async def send(topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        sent.append((topic, value, headers))

    processing = processor(handlers, store, send, attempts=2)
    record = to_record(_charge("stripe.", "ch_1", 0, marker), "stripe.", 0)
    message = ConsumedRecord("stripe.charge", 0, 7, record.key, record.value, record.headers)
    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(processing.process(message)) == "dead_lettered"
    assert all(marker not in r.getMessage() and not r.exc_info for r in caplog.records)
    ((topic, value, headers),) = sent
    assert topic == "stripe.dlq" and value == record.value
    return value, headers


def test_a_handlers_exception_message_stays_out_of_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """The dead-lettering line names the error's type and where it was raised; its message, which may quote the
    event, goes only to the dead letter's error-message header."""
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"
    handlers = HandlerRegistry()

    @handlers.on("charge.updated")
    async def broken(event: Any, ctx: Any) -> None:
        raise KeyError(f"no such thing in {event.object!r}")

    _, headers = _dead_letter_once(handlers, DictStore(), marker, caplog)
    (line,) = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert "KeyError at test_security.py" in line and "in broken" in line
    assert marker in dict(headers)["error-message"].decode()  # the message is kept where it belongs


def test_an_error_of_our_own_is_logged_with_its_stack_not_its_message(caplog: pytest.LogCaptureFixture) -> None:
    marker = f"BODY-MARKER-{uuid.uuid4().hex}"
    handlers = HandlerRegistry()

    @handlers.on("charge.updated")
    async def fine(event: Any, ctx: Any) -> None:
        pass

    class CorruptStore(DictStore):
        def get(self, key: bytes, default: Any = None) -> bytes | None:
            raise RuntimeError(f"cannot read the state next to {marker}")

    _, headers = _dead_letter_once(handlers, CorruptStore(), marker, caplog)
    (line,) = [r.getMessage() for r in caplog.records if "error processing" in r.getMessage()]
    assert "RuntimeError at test_security.py" in line and "in get" in line
    assert "streams/processor.py" in line, "the stack is logged, for the bug to be found"
    assert dict(headers)["error-type"] == b"RuntimeError"


class FakeSaslBroker:
    """Just enough of a Kafka broker to take a client through a SASL/PLAIN login (which aiokafka sends as a
    SaslAuthenticate request, and logs at DEBUG like every request), then refuse it. The embedded broker cannot
    serve here: it offers only SCRAM, and its users live in its memory store, out of reach before login."""

    def __init__(self) -> None:
        self.port = free_port()
        self.auth_payloads: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeSaslBroker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._server.close()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self._converse(conn)
                except (OSError, struct.error):
                    pass

    def _converse(self, conn: socket.socket) -> None:
        from aiokafka.protocol.admin import ApiVersionResponse_v0, SaslAuthenticateResponse_v0, SaslHandShakeResponse_v1

        while True:
            size = struct.unpack(">i", recv_exactly(conn, 4))[0]
            request = recv_exactly(conn, size)
            api_key, _version, correlation_id, client_len = struct.unpack(">hhih", request[:10])
            payload = request[10 + max(client_len, 0) :]
            if api_key == 18:  # ApiVersions: handshake v1 and SaslAuthenticate, so the login is a Kafka request
                body = ApiVersionResponse_v0(error_code=0, api_versions=[(18, 0, 0), (17, 1, 1), (36, 0, 0)]).encode()
            elif api_key == 17:
                body = SaslHandShakeResponse_v1(error_code=0, enabled_mechanisms=["PLAIN"]).encode()
            elif api_key == 36:
                self.auth_payloads.append(payload)
                body = SaslAuthenticateResponse_v0(
                    error_code=58, error_message="authentication failed", sasl_auth_bytes=b""
                ).encode()
            else:
                return
            conn.sendall(struct.pack(">ii", len(body) + 4, correlation_id) + body)


@pytest.mark.integration
def test_kafka_password_from_a_file_reaches_the_broker_but_not_the_debug_log(tmp_path: Path) -> None:
    password = f"kafka-password-{uuid.uuid4().hex}"
    (tmp_path / "password").write_text(password + "\n")
    with FakeSaslBroker() as fake:
        env = {
            **os.environ,
            "PYTHONPATH": REPO,
            "LOG_LEVEL": "DEBUG",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{fake.port}",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "hookstream",
            "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "password"),
            "HOOKSTREAM_HANDLERS": HANDLERS,
            "WORKER_WEB_PORT": str(free_port()),
            "WORKER_DATA_DIR": str(tmp_path / "data"),
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "ops.cli", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )
            try:
                # the worker logs in while creating its topics, and retries after the refusal
                wait_for(lambda: len(fake.auth_payloads) >= 2 or worker.poll() is not None, 60, "a SASL login")
            finally:
                stop_process(worker, timeout=20)
        output = log.read_text(errors="replace")
    assert fake.auth_payloads, output[-3000:]
    assert fake.auth_payloads[0].endswith(b"\x00hookstream\x00" + password.encode())  # PLAIN: in the clear
    assert "cannot reach Kafka" in output, output[-3000:]
    assert "DEBUG" in output, "DEBUG logging was not on: the check would be vacuous"
    assert password not in output, _lines_with(output, password)


# ---------------------------------------------------------------------------------------------------------------
# (b) secrets from the environment or mounted files only


def test_secrets_from_mounted_files_win_over_the_environment(tmp_path: Path) -> None:
    (tmp_path / "stripe").write_text("whsec_new,whsec_old\n")
    (tmp_path / "kafka").write_text("p4ss word\n")
    settings = Settings.from_env(
        {
            "STRIPE_WEBHOOK_SECRETS_FILE": str(tmp_path / "stripe"),
            "STRIPE_WEBHOOK_SECRETS": "whsec_from_env",
            "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "kafka"),
            "KAFKA_SASL_PASSWORD": "from-env",
        }
    )
    assert settings.stripe_webhook_secrets == ("whsec_new", "whsec_old")
    assert settings.kafka_sasl_password == "p4ss word"  # inner spaces kept, the trailing newline not


_SECRETISH = ("secret", "password", "passwd", "token", "credential", "key", "sasl")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_no_long_running_command_takes_a_secret_argument() -> None:
    commands = _subcommands()
    long_running = {"dev", "gateway", "worker", "broker", "replay"}
    assert long_running <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            for option in action.option_strings:
                if name in long_running or option != "--secret-file":
                    assert not any(word in option for word in _SECRETISH), f"hookstream {name} {option}"


@pytest.mark.parametrize("argv", [["gateway", "--secret", "whsec_x"], ["trigger", "invoice.paid", "--secret", "x"]])
def test_a_secret_on_the_command_line_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "unrecognized arguments: --secret" in capsys.readouterr().err


def test_dev_banner_prints_only_the_public_development_secret(capsys: pytest.CaptureFixture[str]) -> None:
    from ops.dev import _print_banner

    _print_banner(Settings.from_env({}), "127.0.0.1:9092")
    assert "signing secret  whsec_hookstream_local_development_secret" in capsys.readouterr().out
    real = f"whsec_{uuid.uuid4().hex}"
    _print_banner(Settings.from_env({"STRIPE_WEBHOOK_SECRETS": real}), "127.0.0.1:9092")
    banner = capsys.readouterr().out
    assert real not in banner
    assert "signing secret  (from STRIPE_WEBHOOK_SECRETS)" in banner


# ---------------------------------------------------------------------------------------------------------------
# (c) the worker's web endpoints on one interface


def _listening(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (IPv4 and IPv6), from /proc/net/tcp*."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for row in f:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(socket.inet_ntop(family, words))
    return found


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.integration
@pytest.mark.parametrize(
    ("bind", "listening", "reachable_on_127_0_0_2"),
    [(None, {"0.0.0.0"}, True), ("127.0.0.1", {"127.0.0.1"}, False)],
    ids=["default", "WORKER_WEB_BIND=127.0.0.1"],
)
def test_worker_web_endpoints_listen_where_told(
    broker: BrokerInfo, bind: str | None, listening: set[str], reachable_on_127_0_0_2: bool
) -> None:
    """README: the worker listens on WORKER_WEB_BIND (default 0.0.0.0, all interfaces). WORKER_WEB_HOST
    (127.0.0.1 in both runs here, from tests/support) is only the name peers use, and restricts nothing."""
    app_id, prefix = _unique("bind")
    env = {"WORKER_WEB_BIND": bind} if bind else {}
    # ready: Faust's own web server, not the stand-in that answers probes while the topics are made (between the
    # two the port is closed for a moment)
    with start_worker(broker, app_id, prefix, **env) as worker:
        assert worker.request("/healthz").status == 200, worker.output()[-3000:]
        assert _listening(worker.port) == listening
        # another loopback address of this machine: reaches a socket on all interfaces, not one on 127.0.0.1
        assert _answers("127.0.0.2", worker.port) is reachable_on_127_0_0_2


# ---------------------------------------------------------------------------------------------------------------
# (e) the dependency audit of `make lint`

_FOUND = {
    "dependencies": [
        {"name": "hookstream", "skip_reason": "distribution marked as editable"},
        {"name": "aiohttp", "version": "3.9.0", "vulns": [{"id": "GHSA-x", "fix_versions": ["3.9.4"], "aliases": []}]},
        {"name": "msgspec", "version": "0.19.0", "vulns": []},
    ]
}
_UNANSWERED = {
    "dependencies": [
        {"name": "hookstream", "skip_reason": "distribution marked as editable"},
        {"name": "aiohttp", "skip_reason": "Dependency not found on PyPI and could not be audited: aiohttp (3.9.0)"},
        {"name": "msgspec", "version": "0.19.0", "vulns": []},
    ]
}


def test_dependency_audit_fails_on_a_known_vulnerability() -> None:
    from ops.depaudit import decide, read_report

    verdict = read_report(_FOUND)
    assert (verdict.checked, verdict.unchecked) == (2, [])  # the editable project itself is no gap
    status, message = decide(verdict, require=False)
    assert status == 1 and "aiohttp 3.9.0: GHSA-x; fixed in: 3.9.4" in message


def test_dependency_audit_never_calls_unchecked_packages_clean() -> None:
    from ops.depaudit import Verdict, decide, read_report

    verdict = read_report(_UNANSWERED)
    status, message = decide(verdict, require=False)
    assert status == 0 and "INCOMPLETE: 1 of 2 installed packages NOT checked" in message
    assert "no known vulnerabilities" not in message
    assert decide(verdict, require=True)[0] == 1
    assert decide(Verdict(failure="ConnectionError"), require=True)[0] == 1
    assert decide(read_report({"dependencies": _UNANSWERED["dependencies"][2:]}), require=True) == (
        0,
        "dependency audit: 1 installed packages checked, no known vulnerabilities",
    )


def test_lint_runs_the_dependency_audit() -> None:
    makefile = (Path(REPO) / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(MAKE) --no-print-directory audit" in lint
    assert "-m ops.depaudit" in makefile.split("\naudit:", 1)[1].split("\n\n", 1)[0]
    assert '"pip-audit>=' in (Path(REPO) / "pyproject.toml").read_text()
