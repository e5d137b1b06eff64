"""Stripe webhook signature verification, exactly as Stripe defines it.

The header is ``t=<unix>,v1=<hex>[,v1=<hex>...]``; the signed string is ``<t>.<raw body>`` and each ``v1`` is a
lowercase hex HMAC-SHA256 of it keyed with a ``whsec_...`` secret (as UTF-8). Other schemes (``v0``) are ignored.
Parsing follows stripe-python's ``WebhookSignature`` item for item, so both accept and refuse the same headers;
the difference is that this works on raw bytes, tries several secrets (rotation) and names the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence
from enum import StrEnum


class Reason(StrEnum):
    """Why a signature was refused; the values are the ``reason`` label of the failure counter."""

    MISSING_HEADER = "missing_header"
    MALFORMED_HEADER = "malformed_header"
    NO_V1_SIGNATURE = "no_v1_signature"
    NO_MATCHING_SIGNATURE = "no_matching_signature"
    TIMESTAMP_OUTSIDE_TOLERANCE = "timestamp_outside_tolerance"


_MESSAGES = {
    Reason.MISSING_HEADER: "missing Stripe-Signature header",
    Reason.MALFORMED_HEADER: "malformed Stripe-Signature header: expected t=<unix time>,v1=<hex>",
    Reason.NO_V1_SIGNATURE: "Stripe-Signature header has no v1 signature",
    Reason.NO_MATCHING_SIGNATURE: "no signature matches the payload for any configured secret",
    Reason.TIMESTAMP_OUTSIDE_TOLERANCE: "signature timestamp is older than the tolerance",
}


class SignatureError(Exception):
    """The request is not a genuine, recent Stripe delivery."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(_MESSAGES[reason])
        self.reason = reason


class SignatureVerifier:
    """Checks ``Stripe-Signature`` headers against every configured secret in constant time per comparison."""

    __slots__ = ("_keys", "_tolerance")

    def __init__(self, secrets: Sequence[str], tolerance: int) -> None:
        if not secrets:
            raise ValueError("at least one webhook secret is needed")
        self._keys = tuple(secret.encode("utf-8") for secret in secrets)
        self._tolerance = tolerance

    def verify(self, header: bytes | None, body: bytes, now: float | None = None) -> int:
        """Return the header's timestamp if a ``v1`` signature of ``body`` matches, else raise SignatureError.

        The body is not parsed: verification comes first, on the exact bytes received. A tolerance of 0 turns
        the age check off (as in stripe-python).
        """
        if not header:
            raise SignatureError(Reason.MISSING_HEADER)
        timestamp, signatures = _parse(header)
        if not signatures:
            raise SignatureError(Reason.NO_V1_SIGNATURE)
        signed = b"%d.%b" % (timestamp, body)
        # Every candidate is compared against every secret: no early exit reveals which secret or value matched.
        matched = False
        for key in self._keys:
            expected = hmac.digest(key, signed, "sha256").hex().encode("ascii")  # one-shot: OpenSSL's HMAC
            for candidate in signatures:
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureError(Reason.NO_MATCHING_SIGNATURE)
        if self._tolerance and timestamp < (time.time() if now is None else now) - self._tolerance:
            raise SignatureError(Reason.TIMESTAMP_OUTSIDE_TOLERANCE)
        return timestamp


def _parse(header: bytes) -> tuple[int, list[bytes]]:
    """Split a header into its timestamp and ``v1`` values, item for item as stripe-python does."""
    timestamp: int | None = None
    signatures: list[bytes] = []
    for item in header.split(b","):
        parts = item.split(b"=", 2)
        if parts[0] == b"t":
            if len(parts) < 2:
                raise SignatureError(Reason.MALFORMED_HEADER)
            if timestamp is not None:
                continue  # the first t counts
            try:
                timestamp = int(parts[1].decode("latin-1"))
            except ValueError:
                raise SignatureError(Reason.MALFORMED_HEADER) from None
        elif parts[0] == b"v1":
            if len(parts) < 2:
                raise SignatureError(Reason.MALFORMED_HEADER)
            signatures.append(parts[1])
    if timestamp is None:
        raise SignatureError(Reason.MALFORMED_HEADER)
    return timestamp, signatures


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """Build a ``Stripe-Signature`` header for ``body``, as Stripe does (used by ``hookstream trigger``)."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode("utf-8"), b"%d.%b" % (ts, body), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"
