"""The topics a worker prepares before it starts (streams/worker.py ``prepare_topics``), against a real broker:
partition counts that would break co-partitioning are refused with the reason, and the dead-letter topic keeps its
records until someone replays them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError

from ops.kafka import create_topics
from ops.settings import Settings
from streams.worker import MissingTopics, PartitionMismatch, prepare_topics
from tests.support import BrokerInfo, topic_configs_set, unique


def _settings(broker: BrokerInfo, app_id: str, prefix: str) -> Settings:
    return Settings.from_env(broker.app_env(app_id, prefix))


def _create(broker: BrokerInfo, topic: str, partitions: int) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            await admin.close()

    asyncio.run(create())


@pytest.mark.integration
def test_an_event_topic_with_another_partition_count_is_refused(broker: BrokerInfo) -> None:
    app_id, prefix = unique("parts")
    settings = _settings(broker, app_id, prefix)
    _create(broker, prefix + "charge", 3)
    with pytest.raises(
        PartitionMismatch, match=rf"TOPIC_PARTITIONS={settings.topic_partitions} .*{prefix}charge has 3"
    ):
        asyncio.run(prepare_topics(settings, [prefix + "charge", prefix + "invoice"]))


@pytest.mark.integration
def test_a_changelog_with_another_partition_count_is_refused(broker: BrokerInfo) -> None:
    """Made by hand, or left from before TOPIC_PARTITIONS changed: assigned apart from the events, a worker would
    recover other partitions' states than its events', and take known objects for new ones."""
    app_id, prefix = unique("changelog")
    settings = _settings(broker, app_id, prefix)
    _create(broker, settings.changelog_topic, 3)
    with pytest.raises(PartitionMismatch, match=rf"{settings.changelog_topic} has 3"):
        asyncio.run(prepare_topics(settings, [prefix + "charge"]))


@pytest.mark.integration
def test_the_dead_letter_topic_keeps_its_records_until_replayed(broker: BrokerInfo) -> None:
    """The brokers' default retention (7 days) would delete a dead letter nobody replayed yet, without a word."""
    app_id, prefix = unique("dlq")
    settings = _settings(broker, app_id, prefix)
    asyncio.run(prepare_topics(settings, [prefix + "charge"]))  # a fresh prefix: no changelog yet, all created
    kept = topic_configs_set(broker, [settings.dlq_topic, prefix + "charge"], "retention.ms")
    assert kept == {settings.dlq_topic: {"retention.ms": "-1"}, prefix + "charge": {}}


def test_a_dead_letter_topic_whose_unlimited_retention_is_refused_is_created_with_the_brokers_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A managed service may cap retention (a policy violation, or an invalid config): refused, the worker would
    not start at all. The topic is created without it instead, and the log says what that means."""
    settings = Settings.from_env({"TOPIC_PREFIX": "capped."})
    asked: list[dict[str, dict[str, str]]] = []

    class CappedAdmin:
        async def create_topics(self, topics: list[NewTopic]) -> Any:
            asked.append({t.name: dict(t.topic_configs) for t in topics})
            errors = [
                (t.name, 44, "retention.ms must be at most 604800000")
                if "retention.ms" in t.topic_configs
                else (t.name, 0, None)
                for t in topics
            ]
            return SimpleNamespace(topic_errors=errors)

    asyncio.run(create_topics(CappedAdmin(), settings, ["capped.charge", "capped.dlq"]))  # type: ignore[arg-type]
    assert asked == [{"capped.charge": {}, "capped.dlq": {"retention.ms": "-1"}}, {"capped.dlq": {}}]
    assert "deleted unreplayed" in caplog.text and "at most 604800000" in caplog.text


class _AdminSeeing:
    """An admin client whose metadata shows the topics of ``seen``, one list per metadata fetch (the last one
    repeated), each with TOPIC_PARTITIONS partitions; creating topics does nothing."""

    def __init__(self, seen: list[list[str]], partitions: int, down: int = 0) -> None:
        self.seen, self.partitions, self.fetches = seen, partitions, 0
        self.down = down  # how many starts fail first, Kafka not answering yet
        self._client = self

    def __call__(self, **options: Any) -> _AdminSeeing:  # stands for the class: prepare_topics makes one per try
        return self

    async def start(self) -> None:
        if self.down:
            self.down -= 1
            raise KafkaConnectionError("Kafka is not up yet")

    async def close(self) -> None: ...

    async def fetch_all_metadata(self) -> Any:
        visible = self.seen[min(self.fetches, len(self.seen) - 1)]
        self.fetches += 1
        parts = set(range(self.partitions))
        return SimpleNamespace(partitions_for_topic=lambda topic: parts if topic in visible else None)


def _admin(monkeypatch: Any, seen: list[list[str]], partitions: int, down: int = 0) -> _AdminSeeing:
    """An ``_AdminSeeing`` for prepare_topics, whose topic creation does nothing."""

    async def created(*args: Any) -> None: ...

    admin = _AdminSeeing(seen, partitions, down)
    monkeypatch.setattr("streams.worker.create_topics", created)
    monkeypatch.setattr("streams.worker.AIOKafkaAdminClient", admin)
    return admin


def test_an_event_topic_not_known_yet_is_waited_for_then_refused_with_the_reason(monkeypatch: Any) -> None:
    """Just created, a topic reaches every broker's metadata a moment later: a first start must not fail on it. One
    that never comes (hookstream may not create it, and nobody did) stops the worker with what to do."""

    settings = Settings.from_env({"TOPIC_PREFIX": "late."})
    late = _admin(monkeypatch, [[], ["late.charge"]], settings.topic_partitions)
    asyncio.run(prepare_topics(settings, ["late.charge"]))
    assert late.fetches == 2

    never = _admin(monkeypatch, [["late.charge"]], settings.topic_partitions)
    with pytest.raises(MissingTopics, match=r"late\.invoice do not exist.*allow hookstream to \(CreateTopics\)"):
        asyncio.run(prepare_topics(settings, ["late.charge", "late.invoice"], patience=0.2))
    assert never.fetches == 2  # tried again once, after its patience ran out (the first wait is 0.5 s)


def test_the_wait_for_topics_starts_once_kafka_answers(monkeypatch: Any) -> None:
    """Workers may start before Kafka: the time Kafka took to come up (1.5 s here, against a patience of 0.2 s)
    must not use up the wait for a topic just created. It did, and the worker stopped saying it could not create
    the topics it had just created."""

    settings = Settings.from_env({"TOPIC_PREFIX": "late."})
    late = _admin(monkeypatch, [[], ["late.charge"]], settings.topic_partitions, down=2)
    asyncio.run(prepare_topics(settings, ["late.charge"], patience=0.2))
    assert (late.down, late.fetches) == (0, 2)
