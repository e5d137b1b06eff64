"""Stream workers against a real broker: order per object, concurrency across objects, duplicates and stale
deliveries, poison events, dead letters and replay, a crash, a restart, and lag."""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import pytest
from aiokafka.partitioner import murmur2

from gateway.envelope import Record
from streams.routing import FORWARDED
from tests.support import (
    BrokerInfo,
    WorkerProcess,
    charge,
    consume,
    hookstream,
    http_request,
    produce,
    start_worker,
    topic_configs_set,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

BASE = 1_790_000_000
EVENTS = "hookstream_events_processed_total"


def handler_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line]


def test_order_per_object_and_concurrency_across_objects(broker: BrokerInfo, tmp_path: Path) -> None:
    app_id, prefix = unique("order")
    objects, per_object = 200, 50
    rng = random.Random(3)
    records = []
    for seq in range(per_object):  # interleaved: every object's seq-th event before any (seq+1)-th
        round_ = [charge(prefix, f"ch_{i}", seq, BASE + seq // 5) for i in range(objects)]
        rng.shuffle(round_)
        records.extend(round_)
    log = tmp_path / "handlers.log"
    produce(broker.bootstrap_servers, records)
    with start_worker(
        broker,
        app_id,
        prefix,
        HOOKSTREAM_TEST_LOG=str(log),
        HOOKSTREAM_TEST_MAX_DELAY="0.02",
        WORKER_MAX_INFLIGHT="400",
    ) as worker:
        total = objects * per_object
        wait_for(
            lambda: worker.metric_sum(EVENTS, outcome="ok") >= total,
            240,
            "all events applied",
        )
        assert worker.metric_sum(EVENTS, outcome="ok") == total
        for i in rng.sample(range(objects), 20):
            state = worker.state(f"ch_{i}")
            assert state is not None
            assert state["fields"]["seqs"] == list(range(per_object))
            assert state["events_applied"] == per_object
            assert state["object_type"] == "charge" and state["status"] == "succeeded"
            assert state["last_event_created"] == BASE + (per_object - 1) // 5

    entries = handler_log(log)
    applied: dict[str, list[int]] = defaultdict(list)
    open_now: set[str] = set()
    most_open = 0
    for kind, _pid, obj, seq, _event in entries:
        if kind == "start":
            assert obj not in open_now, f"{obj} ran two events at once"
            open_now.add(obj)
            most_open = max(most_open, len(open_now))
        elif kind == "end":
            open_now.discard(obj)
            applied[obj].append(int(seq))
    assert len(applied) == objects
    assert all(seqs == list(range(per_object)) for seqs in applied.values())
    assert most_open >= 20, f"at most {most_open} objects in flight at once"


def test_duplicates_and_late_older_snapshots_leave_the_newest_state(broker: BrokerInfo, tmp_path: Path) -> None:
    app_id, prefix = unique("dup")
    first = charge(prefix, "ch_dup", 1, BASE + 10, event_id="evt_first")
    second = charge(prefix, "ch_dup", 2, BASE + 20, event_id="evt_second")
    older = charge(prefix, "ch_dup", 0, BASE + 5, event_id="evt_older")  # Stripe does not promise order
    same_second = charge(prefix, "ch_dup", 3, BASE + 20, event_id="evt_same_second")
    produce(broker.bootstrap_servers, [first, second, first, older, second, same_second, first])
    with start_worker(broker, app_id, prefix, TOPIC_MIN_INSYNC_REPLICAS="1") as worker:
        wait_for(lambda: worker.metric_sum(EVENTS) >= 7, 60, "7 events finished")
        state = worker.state("ch_dup")
        assert state is not None
        assert state["fields"]["seqs"] == [1, 2, 3]  # each applied once, older one never
        assert state["events_applied"] == 3
        assert state["last_event_id"] == "evt_same_second"  # same second: arrival order decides
        assert state["fields"]["amount"] == 103
        assert worker.metric_sum(EVENTS, outcome="duplicate") == 3
        assert worker.metric_sum(EVENTS, outcome="stale") == 1
        assert worker.state("ch_never_seen") is None
        wait_for(lambda: "hookstream_consumer_lag{" in worker.request("/metrics").body.decode(), 30, "lag reported")
        exposed = worker.request("/metrics").body.decode()
        for name in (
            "hookstream_events_processed_total{",
            "hookstream_handler_seconds_bucket{",
            "hookstream_end_to_end_seconds_bucket{",
            "hookstream_consumer_lag{",
            "hookstream_committed_offset{",
            "hookstream_inflight_events ",
            "hookstream_active_actors ",
            "hookstream_event_loop_lag_seconds ",
        ):
            assert name in exposed, name
        assert worker.metric("hookstream_handler_seconds_count", event_type="charge.updated") == 3
        assert worker.metric("hookstream_end_to_end_seconds_count", topic=prefix + "charge") == 7
    # the topics the worker created (dead letters, the table's changelog) carry TOPIC_MIN_INSYNC_REPLICAS, set on
    # each topic (1 is all one broker allows, and also Kafka's default: only where the value comes from tells them
    # apart)
    created = topic_configs_set(broker, [prefix + "dlq", f"{app_id}-objects-changelog"])
    assert created == {
        prefix + "dlq": {"min.insync.replicas": "1"},
        f"{app_id}-objects-changelog": {"min.insync.replicas": "1"},
    }


def test_poison_events_are_retried_dead_lettered_and_replayed(broker: BrokerInfo, tmp_path: Path) -> None:
    app_id, prefix = unique("poison")
    fixed = tmp_path / "fixed"
    records, poison = [], []
    for i in range(20):
        for seq in range(3):
            bad = i < 3 and seq == 2
            records.append(charge(prefix, f"ch_{i}", seq, BASE + seq, fail=bad))
            if bad:
                poison.append(records[-1])
    for i in range(2):  # single-event objects that fail
        records.append(charge(prefix, f"ch_single_{i}", 0, BASE, fail=True))
        poison.append(records[-1])
    produce(broker.bootstrap_servers, records)
    log = tmp_path / "handlers.log"
    env = {
        "HOOKSTREAM_TEST_LOG": str(log),
        "HOOKSTREAM_TEST_FIXED": str(fixed),
        "HANDLER_MAX_ATTEMPTS": "3",
        "HANDLER_RETRY_BACKOFF": "0.05",
    }
    with start_worker(broker, app_id, prefix, **env) as worker:
        wait_for(
            lambda: (
                worker.metric_sum(EVENTS, outcome="dead_lettered") >= 5
                and worker.metric_sum(EVENTS, outcome="ok") >= len(records) - 5
            ),
            90,
            "poison dead-lettered, the rest applied",
        )
        assert worker.metric_sum(EVENTS, outcome="retried") == 5 * 2
        assert worker.metric_sum(EVENTS, outcome="dead_lettered") == 5
        for i in range(3, 20):  # unaffected objects: complete
            state = worker.state(f"ch_{i}")
            assert state is not None and state["fields"]["seqs"] == [0, 1, 2]
        for i in range(3):  # poisoned last event not applied, earlier ones were
            state = worker.state(f"ch_{i}")
            assert state is not None and state["fields"]["seqs"] == [0, 1]
        assert worker.state("ch_single_0") is None

        dead = consume(broker.bootstrap_servers, [prefix + "dlq"], 5)
        assert len(dead) == 5
        by_id = {dict(r.headers)["event-id"]: r for r in dead}
        source_offsets = {
            dict(r.headers)["event-id"]: r for r in consume(broker.bootstrap_servers, [prefix + "charge"], len(records))
        }
        for original in poison:
            event_id = dict(original.headers)["event-id"]
            letter = by_id[event_id]
            headers = {k: v.decode() for k, v in letter.headers}
            assert letter.key == original.key and letter.value == original.value
            assert headers["error-type"] == "RuntimeError"
            assert "poison" in headers["error-message"]
            assert headers["attempts"] == "3"
            assert headers["source-topic"] == prefix + "charge"
            source = source_offsets[event_id]
            assert (int(headers["source-partition"]), int(headers["source-offset"])) == (
                source.partition,
                source.offset,
            )
            assert abs(int(headers["failed-at"]) / 1000 - time.time()) < 600
            assert headers["event-type"] == "charge.updated"

        pending = "hookstream_dead_letters_pending"  # counted beside the replay group, not from the worker's own
        wait_for(lambda: worker.metric(pending) == 5, 30, "5 dead letters counted as waiting")

        # replayed before the handler is fixed, the worker running: each fails again within a second, and its new
        # dead letter is left to the next replay (one that took those too never ended while they kept failing)
        early = _replay(broker, app_id, prefix)
        assert early.returncode == 0 and early.stdout.strip() == f"replayed 5 dead letter(s) from {prefix}dlq", early
        wait_for(lambda: worker.metric_sum(EVENTS, outcome="dead_lettered") == 10, 60, "replayed, failed again")
        wait_for(lambda: worker.metric(pending) == 5, 30, "the 5 new dead letters counted as waiting")

        fixed.touch()  # the handler is fixed: replay brings the dead letters back

        # what a replay would take, and why each failed: nothing sent or committed
        listed = _replay(broker, app_id, prefix, "--list")
        assert listed.returncode == 0, listed.stderr
        assert "5 dead letter(s) in " in listed.stdout
        for original in poison:
            event_id = dict(original.headers)["event-id"].decode()
            assert f"{event_id} (charge.updated) from {prefix}charge[" in listed.stdout
        assert listed.stdout.count("RuntimeError: ") == 5 and "3 attempt(s)" in listed.stdout
        assert worker.metric_sum(EVENTS, outcome="ok") == len(records) - 5

        dropped = dict(poison[-1].headers)["event-id"].decode()  # ch_single_1's: the team decides it never applies
        # a mistyped id among them is found before anything is re-published (the others waited for the fix)
        typo = _replay(broker, app_id, prefix, "--discard", dropped, "--discard", dropped + "x")
        assert typo.returncode == 1 and f"no dead letter to discard for {dropped}x" in typo.stderr, typo.stderr
        assert "nothing replayed" in typo.stderr and typo.stdout == ""
        assert "5 dead letter(s) in " in _replay(broker, app_id, prefix, "--list").stdout
        done = _replay(broker, app_id, prefix, "--discard", dropped)
        assert done.returncode == 0, done.stderr
        assert "replayed 4 dead letter(s)" in done.stdout and "discarded 1" in done.stdout
        wait_for(
            lambda: worker.metric_sum(EVENTS, outcome="ok") >= len(records) - 1,
            60,
            "replayed events applied",
        )
        for i in range(3):
            state = worker.state(f"ch_{i}")
            assert state is not None and state["fields"]["seqs"] == [0, 1, 2]
        assert worker.state("ch_single_0") is not None
        assert worker.state("ch_single_1") is None  # discarded: never sent back
        # sent back with their own headers, and when: their end-to-end time starts at the replay
        republished = consume(broker.bootstrap_servers, [prefix + "charge"], len(records) + 5 + 4)
        replays = {dict(r.headers)["event-id"]: r for r in republished if "replayed-at" in dict(r.headers)}  # the last
        assert len(republished) == len(records) + 5 + 4
        assert set(replays) == {dict(r.headers)["event-id"] for r in poison}
        for original in poison[:-1]:
            sent_back = list(replays[dict(original.headers)["event-id"]].headers)
            assert sent_back[:-1] == list(original.headers) and sent_back[-1][0] == "replayed-at"
            assert abs(int(sent_back[-1][1]) / 1000 - time.time()) < 600
        wait_for(lambda: worker.metric(pending) == 0, 30, "no dead letter waiting once replayed or discarded")
        again = _replay(broker, app_id, prefix)
        assert "replayed 0 dead letter" in again.stdout  # each dead letter is replayed (or discarded) once
        gone = _replay(broker, app_id, prefix, "--discard", dropped)  # discarded: no longer waiting
        assert gone.returncode == 1 and f"no dead letter to discard for {dropped}" in gone.stderr
        # the listing starts where the group's commits are (it reads beside the group, without joining it)
        assert "0 dead letter(s) in " in _replay(broker, app_id, prefix, "--list").stdout


def test_a_handler_that_hangs_is_timed_out_dead_lettered_and_the_worker_consumes_on(
    broker: BrokerInfo, tmp_path: Path
) -> None:
    """A handler waiting forever fails each attempt after HANDLER_TIMEOUT and is dead-lettered; the worker goes on
    consuming (the deadline once cancelled the consumer's fetch loop instead of the handler)."""
    app_id, prefix = unique("hang")
    hanging = charge(prefix, "ch_hangs", 0, BASE, hang=True)
    first = [hanging] + [charge(prefix, f"ch_{i}", 0, BASE) for i in range(10)]
    produce(broker.bootstrap_servers, first)
    env = {"HANDLER_TIMEOUT": "0.5", "HANDLER_MAX_ATTEMPTS": "2", "HANDLER_RETRY_BACKOFF": "0.05"}
    with start_worker(broker, app_id, prefix, HOOKSTREAM_TEST_LOG=str(tmp_path / "handlers.log"), **env) as worker:
        wait_for(
            lambda: worker.metric_sum(EVENTS, outcome="dead_lettered") == 1,
            60,
            "the hanging event dead-lettered",
        )
        (letter,) = consume(broker.bootstrap_servers, [prefix + "dlq"], 1)
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["error-type"] == "TimeoutError" and headers["attempts"] == "2"
        assert letter.value == hanging.value
        assert (tmp_path / "handlers.log").read_text().count("hang ") == 2  # each attempt reached the handler

        produce(broker.bootstrap_servers, [charge(prefix, f"ch_{i}", 1, BASE + 1) for i in range(10)])
        wait_for(
            lambda: worker.metric_sum(EVENTS, outcome="ok") == 20,
            60,
            "events published after the timeout applied",
        )
        for i in range(10):
            state = worker.state(f"ch_{i}")
            assert state is not None and state["fields"]["seqs"] == [0, 1]


@pytest.mark.parametrize(
    ("stuck", "env", "running", "said"),
    [
        # between retries (1,000 attempts, 1 s apart): Faust alone waited for it without a bound, past a pod's
        # grace period, and was killed
        (
            {"fail": True},
            {"HANDLER_TIMEOUT": "2", "HANDLER_MAX_ATTEMPTS": "1000", "HANDLER_RETRY_BACKOFF": "1"},
            ("fail ", 2),  # it failed, and is between retries
            "events unfinished",
        ),
        # a handler that catches BaseException in a loop, ignoring its deadline and the stop's cancellation: the
        # actors give it 5 s more, then leave it behind
        ({"stubborn": True}, {"HANDLER_TIMEOUT": "1"}, ("swallowed ", 1), "swallows CancelledError"),  # its deadline
    ],
    ids=["between-retries", "swallowing-cancellation"],
)
def test_a_worker_stops_cleanly_while_an_event_is_stuck_and_the_event_stays_unprocessed(
    broker: BrokerInfo,
    tmp_path: Path,
    stuck: dict[str, bool],
    env: dict[str, str],
    running: tuple[str, int],
    said: str,
) -> None:
    """SIGTERM while one event cannot finish: the worker gives it HANDLER_TIMEOUT, then stops its actors and exits
    cleanly, saying why. The event was not acked, so the next worker processes it."""
    app_id, prefix = unique("stop-stuck")
    records = [charge(prefix, "ch_stuck", 0, BASE, **stuck)] + [charge(prefix, f"ch_{i}", 0, BASE) for i in range(5)]
    produce(broker.bootstrap_servers, records)
    log, fixed = tmp_path / "handlers.log", tmp_path / "fixed"
    env = {
        **env,
        "STATE_STORE": "rocksdb://",
        "WORKER_DATA_DIR": str(tmp_path / "state"),
        "HANDLER_RETRY_MAX_BACKOFF": "1",
        "HOOKSTREAM_TEST_LOG": str(log),
        "HOOKSTREAM_TEST_FIXED": str(fixed),
    }
    with start_worker(broker, app_id, prefix, **env) as worker:
        wait_for(lambda: worker.metric_sum(EVENTS, outcome="ok") == 5, 60, "others applied")
        line, times = running
        wait_for(lambda: log.read_text().count(line) >= times, 60, f"the stuck event's log: {line.strip()} x{times}")
        # its partition's commit stays before it (lag of a few records: under every threshold), the others reach their
        # ends (the five others are applied: what is behind a commit is only what the stuck event holds)
        wait_for(lambda: len([lag for lag in _per_partition(worker, LAG).values() if lag]) == 1, 30, "one held")
        lags, commits = _per_partition(worker, LAG), _per_partition(worker, COMMITTED)
        (held,) = [partition for partition, lag in lags.items() if lag]
        assert commits[held] == 0, commits  # the stuck event is its partition's first record
        assert worker.stop() == 0, worker.output()[-5000:]  # not killed after stop_process's 30 s
        assert said in worker.output()
    assert any((tmp_path / "state").rglob("clean-stop"))  # its RocksDB state is trusted on restart
    fixed.touch()
    with start_worker(broker, app_id, prefix, **env) as worker:
        wait_for(lambda: worker.state("ch_stuck") is not None, 60, "the event processed by the next worker")
        assert worker.metric_sum(EVENTS, outcome="ok") == 1  # only it: the rest committed
        wait_for(
            lambda: _per_partition(worker, COMMITTED).get(held) == lags[held] and worker.metric_sum(LAG) == 0,
            30,
            "its partition's commit at its end once the event finished",
        )
        assert "did not stop cleanly" not in worker.output()


def test_worker_killed_mid_stream_loses_nothing(broker: BrokerInfo, tmp_path: Path) -> None:
    app_id, prefix = unique("crash")
    objects, per_object = 100, 30
    records = [charge(prefix, f"ch_{i}", seq, BASE + seq) for seq in range(per_object) for i in range(objects)]
    log = tmp_path / "handlers.log"
    env = {"HOOKSTREAM_TEST_LOG": str(log), "HOOKSTREAM_TEST_MAX_DELAY": "0.02", "WORKER_MAX_INFLIGHT": "50"}
    with start_worker(broker, app_id, prefix, **env) as first, start_worker(broker, app_id, prefix, **env) as second:
        wait_for(
            lambda: first.metric_sum(EVENTS) == 0 and _assigned(first) and _assigned(second),
            60,
            "both workers assigned",
        )
        produce(broker.bootstrap_servers, records)
        wait_for(
            lambda: first.metric_sum(EVENTS, outcome="ok") > 300,
            120,
            "the first worker to be busy",
        )
        first.stop(signal.SIGKILL)
        total = objects * per_object
        wait_for(
            lambda: all(_complete(second, f"ch_{i}", per_object) for i in range(objects)),
            240,
            "every object complete on the surviving worker",
        )
        for i in range(objects):
            state = second.state(f"ch_{i}")
            assert state is not None
            assert state["fields"]["seqs"] == list(range(per_object))  # exactly once, in order
            assert state["events_applied"] == per_object
        # the survivor took the killed worker's partitions from their committed offsets: nothing read as skipped
        skipped = second.metric_samples("hookstream_records_skipped_total")
        assert [labels["topic"] for labels, _ in skipped] == [prefix + "charge"] and sum(v for _, v in skipped) == 0
    ended = {(obj, int(seq)) for kind, _pid, obj, seq, _ev in handler_log(log) if kind == "end"}
    assert len(ended) == total  # every event applied at least once
    pids = {pid for _kind, pid, *_ in handler_log(log)}
    assert len(pids) == 2, "both workers processed events"


def test_a_rebalance_hands_over_partitions_without_processing_anything_again(broker: BrokerInfo) -> None:
    """A second worker joins and leaves while events keep coming. Each rebalance revokes every partition; what a
    worker finished before it let go is committed, so the next owner starts after it. Faust committed nothing of a
    revoked partition: the next owner processed again everything since the last periodic commit (measured on that
    code: 234 duplicates on the joining worker and 126 on the first, of about 2,400 events)."""
    app_id, prefix = unique("handover")
    objects, fed, handed_back = 40, [0], threading.Event()

    def feed() -> None:  # until the first worker has its partitions back, so both handovers meet events coming
        while not handed_back.is_set() or fed[0] < 20:
            records = [charge(prefix, f"ch_{i}", fed[0], BASE + fed[0]) for i in range(objects)]
            produce(broker.bootstrap_servers, records, broker.enable_idempotence)  # then a retry writes no repeat
            fed[0] += 1
            time.sleep(0.1)

    def owned(worker: WorkerProcess) -> int:  # the event partitions it reports lag for: those it is assigned
        return len(worker.metric_samples(LAG))

    duplicates = []
    with start_worker(broker, app_id, prefix) as first:
        wait_for(lambda: owned(first) > 0, 60, "the first worker's partitions")
        every = owned(first)
        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            with start_worker(broker, app_id, prefix) as second:
                wait_for(lambda: 0 < owned(first) < every and owned(second) > 0, 60, "the partitions shared")
                wait_for(lambda: second.metric_sum(EVENTS, outcome="ok") > 0, 60, "the second worker busy")
                time.sleep(1)
                duplicates.append(second.metric_sum(EVENTS, outcome="duplicate"))  # as it stops
            wait_for(lambda: owned(first) == every, 60, "the first worker's partitions back")
            wait_for(lambda: first.metric_sum(EVENTS, outcome="ok") > 0, 60, "the first worker busy")
            time.sleep(1)
        finally:
            handed_back.set()
            feeder.join()
        rounds = fed[0]
        wait_for(lambda: all(_complete(first, f"ch_{i}", rounds) for i in range(objects)), 120, "every event applied")
        duplicates.append(first.metric_sum(EVENTS, outcome="duplicate"))
        for i in range(objects):
            state = first.state(f"ch_{i}")
            assert state is not None and state["fields"]["seqs"] == list(range(rounds))
    assert duplicates == [0, 0]


def test_a_state_the_store_cannot_write_stops_the_worker_before_anything_later_of_its_object_runs(
    broker: BrokerInfo, tmp_path: Path
) -> None:
    """A store that fails a write (a full disk) leaves the event unacknowledged. The object's later events used to
    run on and be stored on top: the failed event, processed again after a restart, was then older than its
    object's state, counted stale and its effect lost, and the worker held the partition's commits until someone
    restarted it. Now the object halts and the worker stops; restarted, it applies all of them in order."""
    app_id, prefix = unique("store")
    log, fixed = tmp_path / "handlers.log", tmp_path / "fixed"
    records = [charge(prefix, "ch_store_fails", seq, BASE + seq) for seq in range(3)]
    records += [charge(prefix, f"ch_{i}", seq, BASE + seq) for seq in range(3) for i in range(10)]
    env = {
        "HOOKSTREAM_TEST_LOG": str(log),
        "HOOKSTREAM_TEST_FIXED": str(fixed),
        "HOOKSTREAM_HANDLERS": "tests.handlers.recording,tests.handlers.failing_store",
        "STATE_STORE": "rocksdb://",  # its local copy of the states must be rebuilt from the changelog
        "WORKER_DATA_DIR": str(tmp_path / "data"),
    }
    with start_worker(broker, app_id, prefix, wait_ready=False, **env) as worker:
        produce(broker.bootstrap_servers, records)
        wait_for(lambda: worker.process.poll() is not None, 90, "the worker to stop after the failed write")
        assert worker.process.returncode != 0
        assert "No space left on device (injected" in worker.output()
    started = [(obj, int(seq)) for kind, _pid, obj, seq, _ev in handler_log(log) if kind == "start"]
    assert [seq for obj, seq in started if obj == "ch_store_fails"] == [0]  # nothing after it ran
    fixed.touch()
    with start_worker(broker, app_id, prefix, **env) as worker:
        wait_for(
            lambda: all(_complete(worker, f"ch_{i}", 3) for i in range(10)) and _complete(worker, "ch_store_fails", 3),
            90,
            "every object applied after the restart",
        )
        state = worker.state("ch_store_fails")
        assert state is not None and state["fields"]["seqs"] == [0, 1, 2] and state["events_applied"] == 3


def test_an_event_running_at_a_rebalance_never_runs_on_while_another_worker_has_its_partition(
    broker: BrokerInfo, tmp_path: Path
) -> None:
    """The group gives a member that has not rejoined within WORKER_REBALANCE_TIMEOUT's partitions to the others.
    Faust waits for every running record before it rejoins, without a bound: an event running longer kept running
    (and would have stored its state and emitted) while another worker had its partition and ran it too. Now what
    still runs after half the rebalance timeout is cancelled unacknowledged, and the partition's owner runs it."""
    app_id, prefix = unique("revoke")
    log, fixed = tmp_path / "handlers.log", tmp_path / "fixed"
    env = {"HOOKSTREAM_TEST_LOG": str(log), "HOOKSTREAM_TEST_FIXED": str(fixed), "HANDLER_TIMEOUT": "600"}
    with start_worker(broker, app_id, prefix, **env) as first:
        produce(broker.bootstrap_servers, [charge(prefix, "ch_slow", 0, BASE, hang=True)])
        wait_for(lambda: log.exists() and "hang " in log.read_text(), 60, "the slow event running")
        with start_worker(broker, app_id, prefix, **env) as second:
            # the embedded broker waits for a member that has not rejoined instead of evicting it: there, the whole
            # group waited for the event (up to HANDLER_TIMEOUT)
            wait_for(lambda: _assigned(first) and _assigned(second), 60, "both workers assigned after the rebalance")
            wait_for(lambda: log.read_text().count("hang ") >= 2, 60, "the slow event running again, once assigned")
            time.sleep(2)  # time for a run left behind to show
            fixed.touch()
            wait_for(lambda: second.state("ch_slow") is not None, 60, "the event applied by its partition's owner")
            state = second.state("ch_slow")  # any worker answers: the owner's
            assert state is not None and state["fields"]["seqs"] == [0] and state["events_applied"] == 1
        said = first.output()
    lines = [line.split()[:2] for line in log.read_text().splitlines()]
    running: set[str] = set()
    for kind, pid in lines:
        if kind == "hang":
            assert not running, f"the event ran in {pid} while still running in {running}: {lines}"
            running.add(pid)
        elif kind == "cancelled":
            running.discard(pid)
    assert "into a rebalance: cancelled unacknowledged" in said


LAG, COMMITTED = "hookstream_consumer_lag", "hookstream_committed_offset"


def _per_partition(worker: WorkerProcess, name: str) -> dict[tuple[str, str], float]:
    return {(labels["topic"], labels["partition"]): value for labels, value in worker.metric_samples(name)}


def _assigned(worker: WorkerProcess) -> bool:
    return worker.request("/readyz").status == 200


def _replay(broker: BrokerInfo, app_id: str, prefix: str, *options: str) -> subprocess.CompletedProcess[str]:
    """``hookstream replay`` for the workers of ``app_id`` on ``prefix``'s topics."""
    return hookstream(broker, app_id, prefix, "replay", *options, timeout=120)


def _complete(worker: WorkerProcess, object_id: str, count: int) -> bool:
    try:
        state = worker.state(object_id)
    except (AssertionError, OSError):
        return False
    return state is not None and state["events_applied"] == count


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_restarted_worker_serves_the_same_state(broker: BrokerInfo, tmp_path: Path, store: str) -> None:
    app_id, prefix = unique("restart")
    records = [charge(prefix, f"ch_{i}", seq, BASE + seq) for seq in range(10) for i in range(5)]
    produce(broker.bootstrap_servers, records)
    env = {"STATE_STORE": store, "WORKER_DATA_DIR": str(tmp_path / "state")}
    with start_worker(broker, app_id, prefix, **env) as worker:
        wait_for(lambda: worker.metric_sum(EVENTS, outcome="ok") >= 50, 60, "applied")
        before = {f"ch_{i}": worker.state(f"ch_{i}") for i in range(5)}
    if store == "rocksdb://":
        assert any((tmp_path / "state").rglob("*.sst")) or any((tmp_path / "state").rglob("LOG"))
        assert any((tmp_path / "state").rglob("clean-stop"))  # stopped cleanly: its local state is trusted
    with start_worker(broker, app_id, prefix, **env) as worker:
        after = {f"ch_{i}": worker.state(f"ch_{i}") for i in range(5)}
        assert after == before
        assert worker.metric_sum(EVENTS) == 0  # nothing processed twice
        assert "did not stop cleanly" not in worker.output()
        worker.stop(signal.SIGKILL)
    if store == "rocksdb://":  # killed: its local state may be ahead of the changelog, so it is rebuilt from it
        assert not any((tmp_path / "state").rglob("clean-stop"))
        with start_worker(broker, app_id, prefix, **env) as worker:
            assert {f"ch_{i}": worker.state(f"ch_{i}") for i in range(5)} == before
            assert "did not stop cleanly" in worker.output()


def test_a_data_dir_or_port_the_worker_cannot_use_stops_it_with_one_line(broker: BrokerInfo, tmp_path: Path) -> None:
    """Exit 2 and what is wrong, as for every other setting: a traceback (exit 1) read as a crash."""
    app_id, prefix = unique("unusable")
    (tmp_path / "a-file").write_text("")
    env = {"STATE_STORE": "rocksdb://", "WORKER_DATA_DIR": str(tmp_path / "a-file" / "state")}
    with start_worker(broker, app_id, prefix, wait_ready=False, **env) as worker:
        assert worker.process.wait(timeout=60) == 2, worker.output()[-3000:]
        assert "cannot use" in worker.output() and "Traceback" not in worker.output(), worker.output()[-3000:]
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        with start_worker(broker, app_id, prefix, wait_ready=False, WORKER_WEB_PORT=port) as worker:
            assert worker.process.wait(timeout=60) == 2, worker.output()[-3000:]
            assert "cannot start" in worker.output() and "Traceback" not in worker.output(), worker.output()[-3000:]


def test_a_second_rocksdb_worker_on_the_same_data_dir_refuses_to_start(broker: BrokerInfo, tmp_path: Path) -> None:
    """It would take the first worker's live state for the leftovers of an unclean stop and delete it."""
    app_id, prefix = unique("datadir")
    produce(broker.bootstrap_servers, [charge(prefix, "ch_0", 0, BASE)])
    env = {"STATE_STORE": "rocksdb://", "WORKER_DATA_DIR": str(tmp_path / "state")}
    with start_worker(broker, app_id, prefix, **env) as first:
        wait_for(lambda: first.metric_sum(EVENTS, outcome="ok") >= 1, 60, "applied")
        with start_worker(broker, app_id, prefix, wait_ready=False, **env) as second:
            assert second.process.wait(timeout=60) == 2
            assert "another worker is using" in second.output() and "WORKER_DATA_DIR" in second.output()
        produce(broker.bootstrap_servers, [charge(prefix, "ch_0", 1, BASE + 1)])
        wait_for(lambda: first.metric_sum(EVENTS, outcome="ok") >= 2, 60, "still applying")
        state = first.state("ch_0")
        assert state is not None and state["events_applied"] == 2
    assert any((tmp_path / "state").rglob("clean-stop")), "the first worker stopped cleanly, its state intact"


def test_lag_rises_with_a_backlog_and_returns_to_zero(broker: BrokerInfo, tmp_path: Path) -> None:
    app_id, prefix = unique("lag")
    with start_worker(broker, app_id, prefix, HOOKSTREAM_TEST_MAX_DELAY="0.02") as worker:
        wait_for(
            lambda: (
                worker.metric_sum("hookstream_consumer_lag") == 0
                and "hookstream_consumer_lag{" in worker.request("/metrics").body.decode()
            ),
            30,
            "lag reported",
        )
        # each handled type's outcomes are there from zero before its first event: increase() (the dead-letter
        # alerts) sees its first dead letter, which a series born at 1 would hide
        dead_letters = worker.metric_samples(EVENTS, topic=f"{prefix}charge", event_type="charge.failed")
        assert {labels["outcome"]: value for labels, value in dead_letters}.get("dead_lettered") == 0
        records = [charge(prefix, "ch_lag", seq, BASE + seq) for seq in range(400)]  # one object: sequential
        produce(broker.bootstrap_servers, records)
        wait_for(lambda: worker.metric_sum("hookstream_consumer_lag") > 0, 30, "lag above zero")
        wait_for(lambda: worker.metric_sum(EVENTS, outcome="ok") >= 400, 120, "backlog drained")
        wait_for(lambda: worker.metric_sum("hookstream_consumer_lag") == 0, 30, "lag back to zero")


def test_objects_are_not_answered_before_the_table_is_recovered(broker: BrokerInfo) -> None:
    """While a worker joins or recovers its partitions' state, its table is empty or half rebuilt: a 404 for an
    object that exists (or an older state) would be an answer. It says 503, ask again, until it is ready."""
    app_id, prefix = unique("unready")
    answers: list[tuple[int, int]] = []  # (/objects, then /readyz) statuses
    with start_worker(broker, app_id, prefix, wait_ready=False) as worker:

        def ready() -> bool:
            with contextlib.suppress(OSError):
                objects = worker.request("/objects/ch_anything", timeout=5).status
                answers.append((objects, worker.request("/readyz", timeout=5).status))
                return answers[-1][1] == 200
            return False

        wait_for(ready, 90, "the worker ready", interval=0.05)
        assert worker.state("ch_anything") is None  # ready: an unknown id is a 404
    # a 404 followed by an unready /readyz was given while unready (readiness does not go back at a start)
    assert (404, 503) not in answers and (500, 503) not in answers, answers
    assert (503, 503) in answers  # it was seen unready: the check had something to check


def test_any_worker_answers_for_any_object(broker: BrokerInfo) -> None:
    """GET /objects/<id> is routed to the worker that owns the object's partition."""
    app_id, prefix = unique("route")
    records = [charge(prefix, f"ch_{i}", seq, BASE + seq) for seq in range(3) for i in range(24)]
    with start_worker(broker, app_id, prefix) as first, start_worker(broker, app_id, prefix) as second:
        wait_for(lambda: _assigned(first) and _assigned(second), 60, "both workers assigned")
        produce(broker.bootstrap_servers, records)

        def applied() -> float:
            return sum(w.metric_sum(EVENTS, outcome="ok") for w in (first, second))

        wait_for(lambda: applied() >= len(records), 60, "all applied")
        assert first.metric_sum(EVENTS) > 0
        assert second.metric_sum(EVENTS) > 0  # the work was split
        for i in range(24):
            mine, theirs = first.state(f"ch_{i}"), second.state(f"ch_{i}")
            assert mine is not None and mine == theirs
            assert mine["fields"]["seqs"] == [0, 1, 2]
        assert first.state("ch_unknown") is None and second.state("ch_unknown") is None

        # the owner stopped (frozen, or blocked by a handler) before the group noticed: the other worker answers
        # 503 once its forward times out (streams/routing.py), where Faust's router held the client for up to five
        # minutes (this request gives up after one); an owner killed got a 500 and a traceback
        owned = {int(labels["partition"]) for labels, _ in second.metric_samples("hookstream_consumer_lag")}
        theirs = next(f"ch_{i}" for i in range(24) if (murmur2(f"ch_{i}".encode()) & 0x7FFFFFFF) % 8 in owned)

        # a request already forwarded once is never forwarded again: two workers that each take the other for the
        # owner (mid-rebalance) would bounce it between them
        bounced = http_request(first.port, "GET", f"/objects/{theirs}", headers={FORWARDED: "1"}, timeout=30)
        assert bounced.status == 503 and "rebalancing" in bounced.json()["error"], (bounced.status, bounced.body)
        assert first.request(f"/objects/{theirs}").status == 200  # forwarded once, it is answered

        second.process.send_signal(signal.SIGSTOP)
        try:
            answer = first.request(f"/objects/{theirs}", timeout=60)
        finally:
            second.process.send_signal(signal.SIGCONT)
        assert answer.status == 503, (answer.status, answer.body)
        assert "did not answer" in answer.json()["error"], answer.body


def test_what_a_handler_emits_reaches_its_topic_once_the_event_succeeds(broker: BrokerInfo) -> None:
    """ctx.emit through the worker's real producer: the records of a handled event are in their topic, keyed as the
    handler said, one per event; a failing event's attempts emit nothing (it is dead-lettered)."""
    app_id, prefix = unique("emit")
    followups = f"{prefix}followups"
    records = [charge(prefix, f"ch_{i}", seq, BASE + seq, emit=followups) for i in range(3) for seq in range(2)]
    poison = charge(prefix, "ch_poison", 0, BASE, fail=True, emit=followups)
    with start_worker(broker, app_id, prefix, HANDLER_MAX_ATTEMPTS="2", HANDLER_RETRY_BACKOFF="0.05") as worker:
        produce(broker.bootstrap_servers, [*records, poison])
        wait_for(lambda: _complete(worker, "ch_2", 2), 60, "the events applied")
        wait_for(lambda: worker.metric_sum(EVENTS, outcome="dead_lettered") == 1, 60, "the poison dead-lettered")
        emitted = consume(broker.bootstrap_servers, [followups], len(records), timeout=30)
    objects = {event["id"]: event["data"]["object"]["id"] for event in (msgspec.json.decode(r.value) for r in records)}
    assert sorted(r.value.decode() for r in emitted) == sorted(objects)  # once each, none of the poison's
    assert all(r.key == objects[r.value.decode()].encode() for r in emitted)


def test_state_recovers_fully_from_a_changelog_written_in_large_batches(broker: BrokerInfo) -> None:
    """Table recovery reads the changelog to its end; the embedded broker under-reports that end after
    multi-record batches (DESIGN.md), which once lost one update per partition. Nothing may be lost."""
    app_id, prefix = unique("recover")
    objects, per_object = 20, 100
    records = [charge(prefix, f"ch_{i}", seq, BASE + seq) for seq in range(per_object) for i in range(objects)]
    produce(broker.bootstrap_servers, records)
    env = {"WORKER_PRODUCER_MAX_BATCH_SIZE": "1048576", "HOOKSTREAM_TEST_MAX_DELAY": "0"}
    with start_worker(broker, app_id, prefix, **env) as worker:
        wait_for(
            lambda: worker.metric_sum(EVENTS, outcome="ok") >= len(records),
            120,
            "all applied",
        )
    with start_worker(broker, app_id, prefix, **env) as worker:
        for i in range(objects):
            state = worker.state(f"ch_{i}")
            assert state is not None
            assert state["events_applied"] == per_object
            assert state["fields"]["seqs"] == list(range(per_object))


def test_records_that_bypassed_the_gateway_are_dead_lettered_and_never_stop_a_partition(broker: BrokerInfo) -> None:
    app_id, prefix = unique("hostile")
    topic = prefix + "charge"
    valid = charge(prefix, "ch_h", 0, BASE)
    event = msgspec.json.decode(valid.value)
    hostile: dict[str, bytes | None] = {
        "not JSON": b"\x00\xff not json",
        "empty value": b"",
        "no value (tombstone)": None,
        "JSON array": b"[1, 2, 3]",
        "missing id": msgspec.json.encode({k: v for k, v in event.items() if k != "id"}),
        "created is text": msgspec.json.encode({**event, "created": "yesterday"}),
        "data.object is a list": msgspec.json.encode({**event, "data": {"object": [1]}}),
        "type is a number": msgspec.json.encode({**event, "type": 7}),
        "deeply nested": b'{"a":' * 5000 + b"1" + b"}" * 5000,
        "huge (3 MiB)": msgspec.json.encode({**event, "id": "evt_huge", "padding": "x" * (3 << 20)}),
        "just under the limit": b"x" * ((1 << 20) - 100),  # with the dead letter's headers, over the broker's
    }
    records = []
    for seq, (name, value) in enumerate(hostile.items()):
        records.append(charge(prefix, "ch_h", seq, BASE + seq))  # a valid event before each hostile one
        records.append(Record(topic, b"ch_h", value, [("case", name.encode())], "", ""))  # type: ignore[arg-type]
    records.append(charge(prefix, "ch_h", len(hostile), BASE + len(hostile)))
    produce(broker.bootstrap_servers, records, max_request_size=8 << 20)

    # a gateway limit above the brokers' (KAFKA_MAX_MESSAGE_BYTES, default 1,048,588): dead letters keep to the lower
    with start_worker(broker, app_id, prefix, GATEWAY_MAX_BODY_BYTES=str(2 << 20)) as worker:
        wait_for(lambda: _complete(worker, "ch_h", len(hostile) + 1), 90, "every valid event applied")
        state = worker.state("ch_h")
        assert state is not None and state["fields"]["seqs"] == list(range(len(hostile) + 1))  # in order, once
        letters = consume(broker.bootstrap_servers, [prefix + "dlq"], len(hostile), timeout=60)
        assert "Traceback" not in worker.output()  # each a known kind of bad record, none a surprise
    assert len(letters) == len(hostile)
    by_case = {dict(r.headers)["case"].decode(): r for r in letters}
    assert set(by_case) == set(hostile)
    for name, letter in by_case.items():
        headers = dict(letter.headers)
        assert headers["error-type"] == b"BadRecord", name
        assert headers["error-message"], name
        assert headers["source-topic"] == topic.encode() and letter.key == b"ch_h", name
    assert b"JSON" in dict(by_case["not JSON"].headers)["error-message"]
    assert b"created" in dict(by_case["created is text"].headers)["error-message"]
    assert b"nested too deeply" in dict(by_case["deeply nested"].headers)["error-message"]
    huge = by_case["huge (3 MiB)"]  # over the gateway's limit, so over the broker's too: stored without it
    assert dict(huge.headers)["value-omitted"] == str(len(hostile["huge (3 MiB)"] or b"")).encode()
    assert huge.value == b"" and b"limit" in dict(huge.headers)["error-message"]
    assert by_case["just under the limit"].value == b"" and "value-omitted" in dict(
        by_case["just under the limit"].headers
    )

    # replay takes them in order, --limit at a time; the two stored without their value are skipped (sent back
    # empty, each would take its original's place, and its next dead letter would point at the empty copy)
    omitted = {"huge (3 MiB)", "just under the limit"}  # the last two
    first = _replay(broker, app_id, prefix, "--limit", "4")
    assert first.returncode == 0 and first.stdout.strip() == f"replayed 4 dead letter(s) from {prefix}dlq", first
    # a record without an event id is discarded by its position, as --list shows it
    numbered = by_case["type is a number"]
    where = f"{prefix}dlq[{numbered.partition}]@{numbered.offset}"
    assert f"{where}  ? (" in _replay(broker, app_id, prefix, "--list").stdout
    rest = _replay(broker, app_id, prefix, "--discard", where)
    assert rest.returncode == 0, rest.stderr
    summary = f"replayed {len(hostile) - 7} dead letter(s) from {prefix}dlq, skipped 2, discarded 1"
    assert rest.stdout.strip() == summary
    assert rest.stderr.count("was stored without its") == 2 and f"the record is at {topic}[" in rest.stderr
    sent_back = consume(broker.bootstrap_servers, [topic], len(records) + len(hostile) - 3)
    replayed = [dict(r.headers)["case"].decode() for r in sent_back if "replayed-at" in dict(r.headers)]
    kept = [case for case in hostile if case not in omitted and case != "type is a number"]
    assert replayed == kept  # one key: one partition, in order
    assert len(sent_back) == len(records) + len(hostile) - 3
