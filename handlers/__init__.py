"""The shipped handlers, one module per family of Stripe objects. Each keeps what its objects' snapshots say and
stamps when things happened; for a stale event (older than the state) it only stamps, and a stamp keeps the later
of two times (``_common.on_stamped``)."""
