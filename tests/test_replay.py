"""What ``hookstream replay`` sends back (no broker: the header rewrite; tests/test_worker.py replays for real)."""

from __future__ import annotations

import time

from ops.replay import replay_headers
from streams.dead_letters import dead_letter_headers


def test_a_dead_letter_goes_back_with_its_own_headers_and_one_fresh_replayed_at() -> None:
    """Replayed, failed again and replayed once more: the second replay's time replaces the first's (the processor
    reads the first replayed-at it finds, and the end-to-end time would start at the older replay)."""
    delivered = [("event-id", b"evt_1"), ("event-type", b"invoice.paid"), ("received-at", b"1700000000000")]
    first_replay = [*delivered, ("replayed-at", b"1700000100000")]
    letter = dead_letter_headers(first_replay, RuntimeError("still failing"), 3, "stripe.invoice", 2, 41)
    before = time.time_ns() // 1_000_000
    sent = replay_headers(letter)
    after = time.time_ns() // 1_000_000
    assert sent[:-1] == delivered
    name, value = sent[-1]
    assert name == "replayed-at" and before <= int(value) <= after
