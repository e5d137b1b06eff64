"""What a worker's actors get when its partitions are revoked (streams/app.py): the embedded broker waits for a
member that stops heartbeating, so the group dropping one is not shown end to end; what aiokafka leaves behind when
it does (``reset_generation``) is read here from a real coordinator."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from ops.settings import Settings

#: streams.app builds the Faust app on import, from the environment: with the defaults here
pytestmark = pytest.mark.usefixtures("default_settings")


@pytest.fixture
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HANDLER_TIMEOUT", "WORKER_REBALANCE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def _consumer(generation: int) -> Any:
    """Faust's consumer as ``membership_lost`` reads it: its thread's aiokafka consumer's coordinator."""
    coordinator = SimpleNamespace(generation=generation)
    aiokafka_consumer = SimpleNamespace(_coordinator=coordinator)
    return SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: aiokafka_consumer))


def test_a_worker_the_group_dropped_gives_its_actors_no_grace() -> None:
    from streams.app import membership_lost, revoke_grace

    settings = Settings.from_env({})
    # what aiokafka's coordinator holds after the group refused its heartbeat (unknown member, past generation)
    dropped = GroupCoordinator.__new__(GroupCoordinator)
    dropped.generation, dropped._rejoin_needed_fut = 7, SimpleNamespace(done=lambda: True)
    dropped.reset_generation()
    assert membership_lost(_consumer(dropped.generation))
    assert not membership_lost(_consumer(7))
    assert not membership_lost(SimpleNamespace())  # no consumer thread yet

    assert revoke_grace(stopping=False, lost=True)[0] == 0
    assert revoke_grace(stopping=False, lost=False)[0] == settings.rebalance_grace > 0
    assert revoke_grace(stopping=True, lost=True)[0] == settings.handler_timeout
