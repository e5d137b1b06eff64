"""`hookstream trigger`: a realistic signed event for every event type that has a fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.fixtures import UnknownEventType, build_event, event_types, fixture_for
from tests.support import BrokerInfo, GatewayProcess, consume, start_gateway

pytestmark = pytest.mark.integration


def _types_with_fixtures() -> list[str]:
    found = []
    for event_type in event_types():
        try:
            fixture_for(event_type)
            found.append(event_type)
        except UnknownEventType:
            pass
    return found


def test_fixtures_cover_nearly_all_event_types() -> None:
    assert len(event_types()) == 275
    assert len(_types_with_fixtures()) >= 260
    assert fixture_for("customer.subscription.updated")["object"] == "subscription"
    assert fixture_for("charge.dispute.created")["object"] == "dispute"
    assert fixture_for("checkout.session.completed")["object"] == "checkout.session"
    assert fixture_for("issuing_authorization.request")["object"] == "issuing.authorization"


def test_built_events_carry_the_requested_ids() -> None:
    event = build_event("invoice.paid", object_id="in_abc", event_id="evt_abc", created=1234)
    assert (event["id"], event["type"], event["created"]) == ("evt_abc", "invoice.paid", 1234)
    assert event["data"]["object"]["id"] == "in_abc"
    assert event["object"] == "event"


def _trigger(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", "trigger", *args, "--url", gw.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )


def test_trigger_posts_every_event_type_with_a_fixture(gateway: GatewayProcess) -> None:
    from ops.trigger import trigger
    from tests.support import SECRET

    for event_type in _types_with_fixtures():
        result = trigger(gateway.url, SECRET, event_type)
        assert result.status == 200, (event_type, result.body)
        assert json.loads(result.body) == {"received": True, "id": result.event_id}


def test_trigger_command_sets_the_object_id(gateway: GatewayProcess, broker: BrokerInfo) -> None:
    done = _trigger(gateway, "customer.subscription.created", "--object-id", "sub_trigger_cli", "--age", "3600")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("200 ")
    event_id = json.loads(done.stdout[4:])["id"]
    records = [r for r in consume(broker.bootstrap_servers, ["stripe.subscription"], 1) if r.key == b"sub_trigger_cli"]
    assert len(records) == 1
    event = json.loads(records[0].value)
    assert event["id"] == event_id and event["type"] == "customer.subscription.created"
    assert abs(event["created"] - (time.time() - 3600)) < 120  # --age: an hour ago
    assert f"event {event_id} (customer.subscription.created) about object sub_trigger_cli" in done.stderr


def test_an_object_without_an_id_is_keyed_by_its_event_id(gateway: GatewayProcess, broker: BrokerInfo) -> None:
    """An upcoming invoice does not exist yet: Stripe sends it without an id (it said "about object None")."""
    done = _trigger(gateway, "invoice.upcoming")
    assert done.returncode == 0, done.stderr
    event_id = json.loads(done.stdout[4:])["id"]
    records = [r for r in consume(broker.bootstrap_servers, ["stripe.invoice"], 1) if r.key == event_id.encode()]
    assert len(records) == 1 and "id" not in json.loads(records[0].value)["data"]["object"]
    assert f"event {event_id} (invoice.upcoming) about an object without an id (keyed by the event id)" in done.stderr


def test_trigger_command_explains_unknown_types_and_refusals(gateway: GatewayProcess, tmp_path: Path) -> None:
    unknown = _trigger(gateway, "three_d_secure.authentication.failed")
    assert unknown.returncode == 2
    assert "no Stripe example object" in unknown.stderr
    typo = _trigger(gateway, "payout.payed")  # was sent, answered 200, and counted unhandled
    assert typo.returncode == 2 and typo.stdout == ""
    assert "'payout.payed' is not an event type Stripe sends (did you mean payout.paid" in typo.stderr
    newer = _trigger(gateway, "payout.payed", "--unlisted")  # a type newer than the list: sent when asked
    assert newer.returncode == 0 and newer.stdout.startswith("200 "), newer.stderr
    (tmp_path / "wrong").write_text("whsec_wrong\n")
    refused = _trigger(gateway, "invoice.paid", "--secret-file", str(tmp_path / "wrong"))
    assert refused.returncode == 1
    assert refused.stdout.startswith("400 ")
    missing = _trigger(gateway, "invoice.paid", "--secret-file", str(tmp_path / "missing"))
    assert missing.returncode == 2 and "cannot read the --secret-file" in missing.stderr
    negative = _trigger(gateway, "invoice.paid", "--age", "-5")
    assert negative.returncode == 2 and "not a number of seconds" in negative.stderr


def test_trigger_signs_with_the_secret_file_the_gateway_reads(broker: BrokerInfo, tmp_path: Path) -> None:
    """The same mounted file (comma-separated, rotation) configures the gateway and signs the trigger's event."""
    secrets = tmp_path / "webhook-secrets"
    secrets.write_text("whsec_trigger_new,whsec_trigger_old\n")
    with start_gateway(broker, STRIPE_WEBHOOK_SECRETS_FILE=str(secrets)) as gateway:
        accepted = _trigger(gateway, "invoice.paid", "--secret-file", str(secrets))
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        assert accepted.stdout.startswith("200 ")
        assert "whsec_trigger" not in accepted.stdout + accepted.stderr
        default = _trigger(gateway, "invoice.paid")  # the development secret: not one the gateway accepts
        assert default.returncode == 1 and default.stdout.startswith("400 ")
