"""Kafka client options and topic creation shared by every hookstream component."""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context

from ops.settings import KAFKA_MESSAGE_MAX_BYTES, Settings

#: Kafka's rule for a topic name: anything else the brokers refuse for good.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def is_topic_name(name: str) -> bool:
    return _TOPIC_NAME.fullmatch(name) is not None and name not in (".", "..")


log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_NOT_AUTHORIZED = {29, 30, 31}  # topic, group, cluster authorization failed
_CONFIG_REFUSED = {40, 44}  # invalid config, policy violation


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka connection keyword arguments (bootstrap, security, SASL, TLS) for any client."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_tls:
        options["ssl_context"] = ssl_context(settings)
    if settings.kafka_sasl:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS to the brokers: their CA (KAFKA_SSL_CAFILE, else the system's), and this client's certificate when the
    brokers authenticate clients by theirs (mutual TLS: KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE)."""
    return create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
        password=settings.kafka_ssl_key_password,
    )


def record_position(topic: str, partition: int, offset: int) -> str:
    """Where a record is, as the commands show it and take it (``hookstream replay --discard``, ``audit``'s ids of
    records without an event id): ``topic[partition]@offset``."""
    return f"{topic}[{partition}]@{offset}"


def topic_configs(settings: Settings) -> dict[str, str]:
    """Configs of every topic hookstream creates (event topics, dead letters, the table's changelog).

    ``min.insync.replicas``: with acks=all, how many replicas hold a record before it is acknowledged. The brokers'
    default (Kafka's: 1) acknowledges with the leader alone in sync, and a 200 would then survive no broker loss.
    ``max.message.bytes``: KAFKA_MAX_MESSAGE_BYTES when it is not Kafka's default, so that the topics take what
    the components send (a topic's own limit comes before the brokers').
    """
    configs = {}
    if settings.topic_min_insync_replicas:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    if settings.kafka_max_message_bytes != KAFKA_MESSAGE_MAX_BYTES:
        configs["max.message.bytes"] = str(settings.kafka_max_message_bytes)
    return configs


def dead_letter_topic_configs(settings: Settings) -> dict[str, str]:
    """The dead-letter topic keeps its records for ever (``retention.ms`` -1): a dead letter waits for a replay or a
    discard, and one the brokers' retention deleted (7 days by default) would be gone without a word, from
    ``hookstream replay`` and from the dead-letters-waiting count alike. Dead letters are few."""
    return {**topic_configs(settings), "retention.ms": "-1"}


async def create_topics(admin: AIOKafkaAdminClient, settings: Settings, topics: Iterable[str]) -> None:
    """Create event topics (and the dead-letter topic) with ``TOPIC_PARTITIONS`` partitions; existing ones are left
    as they are.

    All event topics have the same partition count so that Faust tables co-partition with them. A cluster
    that forbids topic creation (topics managed elsewhere, e.g. Strimzi KafkaTopic resources) is logged once
    and otherwise ignored. A dead-letter topic whose ``retention.ms`` -1 the brokers refuse (a managed service's
    retention policy) is created with their retention, and that logged.
    """
    configs = topic_configs(settings)
    dead_letters = dead_letter_topic_configs(settings)
    refused = await _create(admin, settings, {t: dead_letters if t == settings.dlq_topic else configs for t in topics})
    reason = refused.pop(settings.dlq_topic, None)
    if reason is not None:  # its unlimited retention: a managed service's retention policy, say
        log.warning(
            "the brokers refuse retention.ms=-1 for %s (%s): created with their retention instead; dead letters "
            "older than it are deleted unreplayed",
            settings.dlq_topic,
            reason,
        )
        refused |= await _create(admin, settings, {settings.dlq_topic: configs})
    if refused:
        reasons = "; ".join(f"cannot create topic {topic}: {why}" for topic, why in refused.items())
        raise TopicRefusedByPolicy(f"{reasons} (create it outside hookstream, or let this user create it)")


async def _create(admin: AIOKafkaAdminClient, settings: Settings, configs: dict[str, dict[str, str]]) -> dict[str, str]:
    """Create each topic of ``configs`` with its configs; the topics whose configs the brokers refused, and why.
    Any other refusal raises TopicCreationError."""
    if not configs:
        return {}
    new = [
        NewTopic(t, settings.topic_partitions, settings.topic_replication_factor, topic_configs=c)
        for t, c in configs.items()
    ]
    response = await admin.create_topics(new)
    refused = {}
    for topic, code, message in response.topic_errors:
        if code == 0 or code == _TOPIC_ALREADY_EXISTS:
            continue
        if code in _NOT_AUTHORIZED:
            log.warning("not allowed to create topic %s; assuming it is managed outside hookstream", topic)
            continue
        if code in _CONFIG_REFUSED:
            refused[topic] = message or f"error {code}"
            continue
        raise TopicCreationError(f"cannot create topic {topic}: error {code} {message or ''}".strip())
    return refused


class TopicCreationError(RuntimeError):
    """The brokers refused to create a topic (an event topic, or the dead-letter topic)."""


class TopicRefusedByPolicy(TopicCreationError):
    """The brokers refused a topic's creation by their policy or its configs (a managed cluster's rules), not for a
    passing trouble of theirs (a controller election, a broker down): someone must create it, or allow it."""


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Faust's ``broker`` and ``broker_credentials`` settings from the same variables as every other client."""
    import faust

    options: dict[str, Any] = {
        "broker": [f"kafka://{server.strip()}" for server in settings.kafka_bootstrap_servers.split(",")]
    }
    context = ssl_context(settings) if settings.kafka_tls else None
    if settings.kafka_sasl:
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options
