"""Mutual TLS to the brokers (KAFKA_SECURITY_PROTOCOL=SSL with KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE): an event
goes through the gateway, the brokers and a worker with every client presenting its certificate, and a client
without one, or with one the brokers' CA did not sign, is refused.

The embedded broker verifies no client certificate, so it runs behind a TLS proxy that does (the way a Kafka
listener with ``ssl.client.auth=required`` does), and advertises the proxy's address, so that every connection a
client opens after the first goes through it too. The certificates come from openssl (installed by ``make test``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError

from gateway.rdkafka import AsyncProducer, librdkafka_config
from ops.broker import EmbeddedBroker
from ops.fixtures import build_event, encode
from ops.kafka import client_options
from ops.process import free_port
from ops.settings import Settings
from tests.support import BrokerInfo, start_gateway, start_worker, unique, wait_for

pytestmark = pytest.mark.integration

CLIENT_NAME = "hookstream-client"
KEY_PASSWORD = "open sesame"


@dataclass
class Pki:
    """A CA, the brokers' certificate (for 127.0.0.1), hookstream's client certificate (signed by the CA) and a
    stranger's (self-signed): PEM files in one directory."""

    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def client_env(self, cert: str = "client") -> dict[str, str]:
        return {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": self.path("ca.crt"),
            "KAFKA_SSL_CERTFILE": self.path(f"{cert}.crt"),
            "KAFKA_SSL_KEYFILE": self.path(f"{cert}.key"),
        }


def make_pki(directory: Path) -> Pki:
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    def new_key(name: str, subject: str) -> None:
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject
        )

    def sign(name: str, *extra: str) -> None:
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"),
            *("-out", f"{name}.crt", "-days", "2", *extra),
        )

    self_signed = ("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2")
    openssl(*self_signed, "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=hookstream test CA")
    openssl(*self_signed, "-keyout", "stranger.key", "-out", "stranger.crt", "-subj", f"/CN={CLIENT_NAME}")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    new_key("server", "/CN=localhost")
    sign("server", "-extfile", "server.ext")
    new_key("client", f"/CN={CLIENT_NAME}")
    sign("client")
    (directory / "sealed.crt").write_bytes((directory / "client.crt").read_bytes())  # its key encrypted:
    openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}", "-out", "sealed.key")
    return Pki(directory)


class TlsProxy:
    """Accepts TLS connections from clients holding a certificate the CA signed, notes each one's common name, and
    relays its bytes to the broker; in a thread of its own (the clients are other processes, or asyncio.run)."""

    def __init__(self, pki: Pki, port: int, upstream_port: int) -> None:
        self.port, self._upstream_port = port, upstream_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.path("ca.crt"))
        self._context.load_cert_chain(pki.path("server.crt"), pki.path("server.key"))
        self._context.verify_mode = ssl.CERT_REQUIRED
        self.clients: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        start = asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self._context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(item for rdn in writer.get_extra_info("peercert")["subject"] for item in rdn)
        self.clients.append(subject["commonName"])
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerInfo, Pki, TlsProxy]]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    proxy_port, broker_port = free_port(), free_port()
    with (
        EmbeddedBroker(broker_port, advertised=f"127.0.0.1:{proxy_port}"),
        TlsProxy(pki, proxy_port, broker_port) as proxy,
    ):
        yield BrokerInfo(f"127.0.0.1:{proxy_port}", enable_idempotence=False), pki, proxy


async def _admin_connects(settings: Settings) -> None:
    """An aiokafka client (the worker's and the commands' kind) connects, or raises."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
    try:
        await admin.start()
    finally:
        await admin.close()


def test_an_event_goes_through_gateway_brokers_and_worker_each_client_presenting_its_certificate(
    tls_broker: tuple[BrokerInfo, Pki, TlsProxy],
) -> None:
    broker, pki, proxy = tls_broker
    app_id, prefix = unique("tls")
    tls = pki.client_env()
    with start_worker(broker, app_id, prefix, **tls) as worker:
        with start_gateway(broker, TOPIC_PREFIX=prefix, **tls) as gateway:
            answer = gateway.post_event(encode(build_event("charge.succeeded", object_id="ch_tls")))
            assert answer.status == 200, answer.body
        wait_for(lambda: worker.state("ch_tls") is not None, 60, "the event applied")
    # the gateway's producer and admin client, the worker's consumer, producers and admin client: many connections,
    # each with the client's certificate (the proxy accepts no other)
    assert len(proxy.clients) >= 4 and set(proxy.clients) == {CLIENT_NAME}


def test_an_encrypted_key_is_read_with_its_password(tls_broker: tuple[BrokerInfo, Pki, TlsProxy]) -> None:
    """KAFKA_SSL_KEY_PASSWORD, for both kinds of client: aiokafka's (the worker, the commands) and librdkafka's
    (the gateway)."""
    broker, pki, proxy = tls_broker
    settings = Settings.from_env(broker.env() | pki.client_env("sealed") | {"KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD})
    seen = len(proxy.clients)

    async def connect() -> bool:
        await _admin_connects(settings)
        producer = AsyncProducer(librdkafka_config(settings), asyncio.get_running_loop())
        try:
            return await asyncio.to_thread(producer.cluster_answers, 10)
        finally:
            await producer.close(5)

    assert asyncio.run(connect())
    assert len(proxy.clients) > seen and set(proxy.clients) == {CLIENT_NAME}


@pytest.mark.parametrize("cert", [None, "stranger"])
def test_a_client_without_a_certificate_the_brokers_ca_signed_is_refused(
    tls_broker: tuple[BrokerInfo, Pki, TlsProxy], cert: str | None
) -> None:
    broker, pki, proxy = tls_broker
    env = pki.client_env(cert or "client")
    if cert is None:
        del env["KAFKA_SSL_CERTFILE"], env["KAFKA_SSL_KEYFILE"]
    settings = Settings.from_env(broker.env() | env)
    seen = len(proxy.clients)

    with pytest.raises(KafkaConnectionError):
        asyncio.run(_admin_connects(settings))
    assert len(proxy.clients) == seen  # refused in the handshake
