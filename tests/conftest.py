"""Shared fixtures: one Kafka-protocol broker for the session, and real gateway processes on free ports.

The broker comes from KAFKA_BOOTSTRAP_SERVERS when set, else from testcontainers' Kafka when a Docker engine
answers, else the embedded Tansu broker is started. If none can be had the suite fails: it never skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ops.broker import EmbeddedBroker
from ops.process import free_port
from tests.support import BrokerInfo, GatewayProcess, start_gateway


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerInfo]:
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        idempotence = os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "true")
        yield BrokerInfo(given, enable_idempotence=idempotence.lower() in ("1", "true", "yes", "on"))
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield BrokerInfo(kafka.get_bootstrap_server(), enable_idempotence=True)
        return
    with EmbeddedBroker(free_port()) as embedded:
        yield BrokerInfo(embedded.bootstrap_servers, enable_idempotence=False, embedded=embedded)


@pytest.fixture
def gateway(broker: BrokerInfo) -> Iterator[GatewayProcess]:
    """A gateway process with default settings, connected to the session broker."""
    with start_gateway(broker) as process:
        yield process
