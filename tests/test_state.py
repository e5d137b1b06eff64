"""The rules that keep state right: duplicates, stale deliveries, same-second order, bounded memory of ids."""

from __future__ import annotations

from ops.fixtures import build_event, encode
from streams.events import decode_event
from streams.state import (
    RECENT_EVENT_IDS,
    Outcome,
    decode_state,
    encode_state,
    judge,
    new_state,
    record_applied,
    start_applying,
)


def event(event_id: str, created: int, status: str = "active") -> object:
    return decode_event(
        encode(
            build_event(
                "customer.subscription.updated",
                object_id="sub_1",
                event_id=event_id,
                created=created,
                object_fields={"status": status},
            )
        )
    )


def apply(state, ev) -> None:  # type: ignore[no-untyped-def]
    assert judge(state, ev) is None
    start_applying(state, ev)
    record_applied(state, ev)


def test_duplicate_stale_and_same_second() -> None:
    first = event("evt_1", 100)
    state = new_state("sub_1", first)
    assert state.object_type == "subscription"
    apply(state, first)
    assert judge(state, first) is Outcome.DUPLICATE
    assert judge(state, event("evt_0", 99)) is Outcome.STALE
    same_second = event("evt_2", 100, status="past_due")
    apply(state, same_second)  # same second: applied, arrival order decides
    assert (state.status, state.last_event_id, state.events_applied) == ("past_due", "evt_2", 2)


def test_recent_ids_are_bounded_and_state_round_trips() -> None:
    state = new_state("sub_1", event("evt_x", 1))
    for i in range(RECENT_EVENT_IDS + 10):
        apply(state, event(f"evt_{i}", 1000 + i))
    assert len(state.recent_event_ids) == RECENT_EVENT_IDS
    assert state.recent_event_ids[-1] == f"evt_{RECENT_EVENT_IDS + 9}"
    assert decode_state(encode_state(state)) == state
