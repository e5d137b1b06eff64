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


def event(
    event_id: str,
    created: int,
    status: str = "active",
    event_type: str = "customer.subscription.updated",
    object_id: str = "sub_1",
) -> object:
    return decode_event(
        encode(
            build_event(
                event_type, object_id=object_id, event_id=event_id, created=created, object_fields={"status": status}
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


def test_a_created_event_from_the_same_second_as_the_state_is_older() -> None:
    """Stripe sends customer.subscription.created (incomplete) and .updated (active) within one second, in no
    promised order: applied in arrival order, the subscription would stay incomplete until its next event."""
    updated = event("evt_upd", 100, status="active")
    state = new_state("sub_1", updated)
    apply(state, updated)
    created = event("evt_new", 100, status="incomplete", event_type="customer.subscription.created")
    assert judge(state, created) is Outcome.STALE
    assert judge(state, event("evt_new", 101, status="incomplete", event_type="customer.subscription.created")) is None


def test_within_a_second_a_final_status_is_not_left() -> None:
    """invoice.paid and invoice.finalized of one second arrive reversed: the open invoice is the older snapshot.
    Another event showing the same final status, or any status a second later, still applies."""
    paid = event("evt_paid", 200, status="paid", event_type="invoice.paid", object_id="in_1")
    state = new_state("in_1", paid)
    assert state.object_type == "invoice"
    apply(state, paid)
    assert judge(state, event("evt_fin", 200, status="open", event_type="invoice.finalized", object_id="in_1")) is (
        Outcome.STALE
    )
    succeeded = event("evt_ps", 200, status="paid", event_type="invoice.payment_succeeded", object_id="in_1")
    apply(state, succeeded)
    assert (state.status, state.last_event_id) == ("paid", "evt_ps")
    later = event("evt_upd", 201, status="open", event_type="invoice.updated", object_id="in_1")
    assert judge(state, later) is None  # a later second decides, whatever it shows


def test_within_a_second_a_deleted_invoice_stays_deleted() -> None:
    """invoice.deleted (the shipped handler sets ``deleted``, hookstream's own status) and an invoice.updated of
    the same second arrive reversed: the draft snapshot is the older one."""
    state = new_state("in_2", event("evt_del", 500, status="draft", event_type="invoice.deleted", object_id="in_2"))
    state.status = "deleted"
    state.last_event_created = 500
    updated = event("evt_upd", 500, status="draft", event_type="invoice.updated", object_id="in_2")
    assert judge(state, updated) is Outcome.STALE


def test_within_a_second_a_status_that_is_not_final_follows_arrival_order() -> None:
    """A subscription's past_due is not final: an active from the same second after it applies (and the
    reverse); a payout's paid is not final either (a paid payout can still fail)."""
    past_due = event("evt_pd", 300, status="past_due")
    state = new_state("sub_1", past_due)
    apply(state, past_due)
    apply(state, event("evt_act", 300, status="active"))
    assert state.status == "active"
    paid = event("evt_po", 400, status="paid", event_type="payout.paid", object_id="po_1")
    payout = new_state("po_1", paid)
    apply(payout, paid)
    apply(payout, event("evt_pf", 400, status="failed", event_type="payout.failed", object_id="po_1"))
    assert payout.status == "failed"


def _tie(object_id: str, *applied: tuple[str, str], then: tuple[str, str]) -> Outcome | None:
    """The verdict on ``then`` (event type, status) arriving after ``applied`` were, all in one second."""
    events = [
        event(f"evt_{i}", 500, status=status, event_type=event_type, object_id=object_id)
        for i, (event_type, status) in enumerate(applied)
    ]
    state = new_state(object_id, events[0])
    for applied_event in events:
        apply(state, applied_event)
    return judge(state, event("evt_then", 500, status=then[1], event_type=then[0], object_id=object_id))


def test_within_a_second_an_earlier_step_a_notice_or_a_left_final_status_is_older() -> None:
    """Ties a payments team meets: each older snapshot, applied after the newer one, undid what it said."""
    failed, finalized = ("invoice.payment_failed", "open"), ("invoice.finalized", "open")
    # an invoice charged at once: finalized and failed in one second (the attempts went back to none), also with
    # the invoice.updated that comes with most steps between them
    assert _tie("in_1", failed, then=finalized) is Outcome.STALE
    assert _tie("in_1", failed, ("invoice.updated", "open"), then=finalized) is Outcome.STALE
    assert _tie("in_1", finalized, then=failed) is None
    assert _tie("in_1", failed, then=("invoice.payment_action_required", "open")) is None  # steps of one rank
    # a checkout paid at once by a delayed method: completed (unpaid) after the payment
    paid = ("checkout.session.async_payment_succeeded", "complete")
    assert _tie("cs_1", paid, then=("checkout.session.completed", "complete")) is Outcome.STALE
    # a trial ended early: the notice's trialing snapshot after the update that ended it
    trial_end = ("customer.subscription.trial_will_end", "trialing")
    assert _tie("sub_1", ("customer.subscription.updated", "active"), then=trial_end) is Outcome.STALE
    assert _tie("sub_1", trial_end, then=("customer.subscription.updated", "active")) is None
    # a charge never leaves succeeded or failed (a refund changes its flags): a pending snapshot is older
    assert _tie("ch_1", ("charge.succeeded", "succeeded"), then=("charge.pending", "pending")) is Outcome.STALE
    assert _tie("ch_1", ("charge.failed", "failed"), then=("charge.pending", "pending")) is Outcome.STALE
    assert _tie("ch_1", ("charge.succeeded", "succeeded"), then=("charge.refunded", "succeeded")) is None
    # a prevented dispute is closed for good
    prevented = ("charge.dispute.closed", "prevented")
    assert _tie("dp_1", prevented, then=("charge.dispute.updated", "warning_needs_response")) is Outcome.STALE
    # a payment intent retried at once after a failure goes back a step: the newer status, applied
    pi_failed = ("payment_intent.payment_failed", "requires_payment_method")
    assert _tie("pi_1", pi_failed, then=("payment_intent.amount_capturable_updated", "requires_capture")) is None
    assert _tie("pi_1", pi_failed, then=("payment_intent.processing", "processing")) is None
    # steps of no known order, and updates: the partition's order decides, as before
    assert _tie("in_1", failed, then=("invoice.updated", "open")) is None
    # the second passed: a new one starts from no step
    state = new_state("in_2", event("evt_a", 500, "open", "invoice.payment_failed", "in_2"))
    apply(state, event("evt_a", 500, "open", "invoice.payment_failed", "in_2"))
    apply(state, event("evt_b", 501, "open", "invoice.updated", "in_2"))
    assert judge(state, event("evt_c", 501, "open", "invoice.finalized", "in_2")) is None


def test_the_state_names_the_connected_account_and_live_or_test() -> None:
    """A Connect platform acts on an object through its account (``Stripe-Account``): the events say which."""
    connected = decode_event(
        encode(build_event("invoice.paid", object_id="in_c", event_id="evt_c", created=1, account="acct_1"))
    )
    state = new_state("in_c", connected)
    apply(state, connected)
    assert (state.account, state.livemode) == ("acct_1", False)
    before = b'{"object_id":"in_old","object_type":"invoice","events_applied":1}'  # stored before these fields
    assert (decode_state(before).account, decode_state(before).livemode) == (None, None)
