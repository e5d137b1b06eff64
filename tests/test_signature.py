"""Signature verification, cross-checked against stripe-python both ways."""

from __future__ import annotations

import time

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.signature import Reason, SignatureError, SignatureVerifier, sign

SECRET_A = "whsec_test_secret_a"
SECRET_B = "whsec_rotated_secret_b"
TOLERANCE = 300


def ours(secrets: list[str], header: str, body: str) -> bool:
    try:
        SignatureVerifier(secrets, TOLERANCE).verify(header.encode("latin-1"), body.encode("utf-8"))
        return True
    except SignatureError:
        return False


def theirs(secret: str, header: str, body: str) -> bool:
    try:
        return bool(stripe.WebhookSignature.verify_header(body, header, secret, TOLERANCE))
    except Exception:  # SignatureVerificationError, and TypeError on non-ASCII signatures
        return False


def reason(secrets: list[str], header: bytes | None, body: bytes, tolerance: int = TOLERANCE) -> Reason | None:
    try:
        SignatureVerifier(secrets, tolerance).verify(header, body)
        return None
    except SignatureError as exc:
        return exc.reason


bodies = st.text(max_size=300)
secrets_ = st.sampled_from([SECRET_A, SECRET_B, "whsec_" + "x" * 32, "whsec_ünïcødé"])


@settings(max_examples=300, deadline=None)  # a loaded machine must not fail it: no time limit per example
@given(body=bodies, secret=secrets_, age=st.integers(min_value=-3600, max_value=TOLERANCE - 5))
def test_headers_stripe_generates_are_accepted(body: str, secret: str, age: int) -> None:
    header = stripe.WebhookSignature.generate_signature_header(body, secret, int(time.time()) - age)
    assert ours([secret], header, body)
    assert ours([SECRET_A, SECRET_B, secret], header, body)


@settings(max_examples=300, deadline=None)  # a loaded machine must not fail it: no time limit per example
@given(body=bodies, secret=secrets_)
def test_headers_we_sign_are_accepted_by_stripe(body: str, secret: str) -> None:
    header = sign(body.encode("utf-8"), secret)
    assert theirs(secret, header, body)


def _hex_flip(sig: str, index: int) -> str:
    i = index % len(sig)
    return sig[:i] + ("0" if sig[i] != "0" else "1") + sig[i + 1 :]


@st.composite
def signature_headers(draw: st.DrawFn, body: str) -> str:
    """Valid, tampered, expired, malformed and multi-signature headers for ``body``."""
    now = int(time.time())
    timestamp = draw(
        st.sampled_from([now, now - 10, now + 600, now - 1000, now - 100_000])
        | st.integers(min_value=-(10**12), max_value=10**12)
    )
    ts_text = draw(
        st.sampled_from([str(timestamp), f" {timestamp}", f"+{timestamp}", f"0{timestamp}", ""])
        | st.text(alphabet="0123456789abc_+- ", max_size=12)
    )

    def v1(secret: str, signed_body: str = body, ts: int = timestamp) -> str:
        return sign(signed_body.encode("utf-8"), secret, ts).split("v1=")[1]

    candidates = st.sampled_from(
        [
            f"v1={v1(SECRET_A)}",
            f"v1={v1(SECRET_B)}",
            f"v1={_hex_flip(v1(SECRET_A), draw(st.integers(0, 63)))}",  # tampered signature
            f"v1={v1(SECRET_A, body + ' ')}",  # signature of another body
            f"v1={v1(SECRET_A, ts=timestamp + 1)}",  # signature of another time
            f"v1={v1(SECRET_A).upper()}",
            f"v0={v1(SECRET_A)}",  # other schemes are ignored
            "v1=",
            "v1",
            f"v1={v1(SECRET_A)}=extra",
            "v2=deadbeef",
            f" v1={v1(SECRET_A)}",
            "garbage",
        ]
    ) | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
    items = draw(st.lists(candidates, max_size=5))
    t_items = draw(st.sampled_from([[f"t={ts_text}"], [], ["t"], [f"t={ts_text}", "t=1"], [f"t={ts_text}=x"]]))
    everything = draw(st.permutations(t_items + items))
    return ",".join(everything)


@settings(max_examples=1500, deadline=None)  # a loaded machine must not fail it: no time limit per example
@given(data=st.data(), body=bodies)
def test_corpus_accept_reject_agrees_with_stripe(data: st.DataObject, body: str) -> None:
    header = data.draw(signature_headers(body))
    for secrets in ([SECRET_A], [SECRET_B], [SECRET_A, SECRET_B]):
        expected = any(theirs(s, header, body) for s in secrets)
        assert ours(secrets, header, body) == expected, (secrets, header)


@settings(max_examples=500, deadline=None)  # a loaded machine must not fail it: no time limit per example
@given(header=st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=200), body=bodies)
def test_arbitrary_headers_agree_with_stripe(header: str, body: str) -> None:
    assert ours([SECRET_A], header, body) == theirs(SECRET_A, header, body)


def test_reasons() -> None:
    body = b'{"id": "evt_1"}'
    now = int(time.time())
    good = sign(body, SECRET_A, now).encode()
    assert reason([SECRET_A], good, body) is None
    assert reason([SECRET_A], None, body) is Reason.MISSING_HEADER
    assert reason([SECRET_A], b"", body) is Reason.MISSING_HEADER
    assert reason([SECRET_A], b"v1=abc", body) is Reason.MALFORMED_HEADER
    assert reason([SECRET_A], b"t=yesterday,v1=abc", body) is Reason.MALFORMED_HEADER
    v0_only = good.replace(b"v1=", b"v0=")
    assert reason([SECRET_A], v0_only, body) is Reason.NO_V1_SIGNATURE
    assert reason([SECRET_B], good, body) is Reason.NO_MATCHING_SIGNATURE
    assert reason([SECRET_A], good, body + b" ") is Reason.NO_MATCHING_SIGNATURE
    old = sign(body, SECRET_A, now - TOLERANCE - 60).encode()
    assert reason([SECRET_A], old, body) is Reason.TIMESTAMP_OUTSIDE_TOLERANCE
    assert reason([SECRET_A], old, body, tolerance=0) is None  # 0 turns the age check off, as in stripe


def test_rotation_accepts_any_configured_secret_and_any_v1() -> None:
    body = b'{"id": "evt_2"}'
    now = int(time.time())
    new_sig = sign(body, SECRET_B, now).split("v1=")[1]
    old_sig = sign(body, SECRET_A, now).split("v1=")[1]
    both = f"t={now},v1={old_sig},v1={new_sig}".encode()
    assert reason([SECRET_A], both, body) is None
    assert reason([SECRET_B], both, body) is None
    assert reason(["whsec_other"], both, body) is Reason.NO_MATCHING_SIGNATURE
    only_new = f"t={now},v1={new_sig}".encode()
    assert reason([SECRET_A, SECRET_B], only_new, body) is None


def test_signature_is_over_raw_bytes_not_reencoded_json() -> None:
    spaced = b'{"id":  "evt_3", "type": "x"}'
    compact = b'{"id":"evt_3","type":"x"}'
    header = sign(spaced, SECRET_A).encode()
    assert reason([SECRET_A], header, spaced) is None
    assert reason([SECRET_A], header, compact) is Reason.NO_MATCHING_SIGNATURE


def test_no_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        SignatureVerifier([], TOLERANCE)


def test_corpus_holds_accepted_and_refused_headers() -> None:
    """The agreement test above is only worth something if its corpus reaches both answers."""
    from hypothesis import find

    body = '{"id": "evt_4"}'
    assert ours([SECRET_A], find(signature_headers(body), lambda h: ours([SECRET_A], h, body)), body)
    for wanted in (Reason.NO_MATCHING_SIGNATURE, Reason.TIMESTAMP_OUTSIDE_TOLERANCE, Reason.MALFORMED_HEADER):
        header = find(
            signature_headers(body),
            lambda h, w=wanted: reason([SECRET_A], h.encode("latin-1"), body.encode()) is w,
        )
        assert not theirs(SECRET_A, header, body)
