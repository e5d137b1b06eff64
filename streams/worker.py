"""``hookstream worker``: create the topics the handlers need, then run the Faust worker on uvloop."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import shutil
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ops.kafka import TopicCreationError, client_options, create_topics
from ops.logs import apply_library_floors
from ops.settings import Settings

log = logging.getLogger(__name__)


async def prepare_topics(settings: Settings, topics: list[str], patience: float = 30.0) -> None:
    """Event topics and the dead-letter topic, all with ``TOPIC_PARTITIONS`` partitions (co-partitioning).

    Waits for the broker with capped backoff, so workers may start before Kafka does, and then up to ``patience``
    seconds (from the first answer: an outage must not use them up) for an event topic it cannot see: one just
    created is known to every broker only a moment later, and one hookstream may not create may be on its way from
    whoever manages topics. Raises MissingTopics after that, PartitionMismatch for a partition count that breaks
    co-partitioning, TopicCreationError for a topic the brokers refuse to create.
    """
    delay = 0.5
    deadline: float | None = None
    while True:
        admin = AIOKafkaAdminClient(**client_options(settings))
        try:
            await admin.start()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + patience
            await create_topics(admin, settings, [*topics, settings.dlq_topic])
            missing = await _check_partitions(admin, settings, topics)
            if not missing:
                return
            if asyncio.get_running_loop().time() >= deadline:
                raise MissingTopics(
                    f"{', '.join(missing)} do not exist, and hookstream could not create them: create them with "
                    f"TOPIC_PARTITIONS={settings.topic_partitions} partitions, or allow hookstream to (CreateTopics)"
                )
            log.warning("waiting for topics %s to exist; trying again in %.1fs", ", ".join(missing), delay)
        except KafkaError as exc:
            log.warning(
                "cannot reach Kafka at %s (%s); retrying in %.1fs", settings.kafka_bootstrap_servers, exc, delay
            )
        finally:
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


async def prepare_answering_probes(settings: Settings, topics: list[str]) -> None:
    """``prepare_topics``, with ``/healthz`` answering meanwhile on the worker's web port (``/readyz`` 503): a worker
    waiting for Kafka is alive, and a startup probe that met a closed port for that long (Kafka slower to come up
    than the workers, an outage over a restart) killed it into a crash loop. Faust's web server takes the port once
    the topics are ready."""
    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "starting: waiting for Kafka and the topics"})

    async def not_yet(request: web.Request) -> web.Response:
        return web.json_response({"ready": False, "reason": "waiting for Kafka and the topics"}, status=503)

    probes = web.Application()
    probes.router.add_get("/healthz", healthz)
    probes.router.add_get("/{anything:.*}", not_yet)
    runner = web.AppRunner(probes, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.worker_web_bind, settings.worker_web_port).start()
        await prepare_topics(settings, topics)
    finally:
        await runner.cleanup()


class MissingTopics(RuntimeError):
    """Event topics a worker needs do not exist, and it may not create them."""


class PartitionMismatch(RuntimeError):
    """An event topic's or the changelog's partition count differs from TOPIC_PARTITIONS: the objects table would
    not co-partition with the events (streams/table.py writes an object's state to its event's partition)."""


async def _check_partitions(admin: AIOKafkaAdminClient, settings: Settings, topics: list[str]) -> list[str]:
    """The event topics that do not exist (yet); PartitionMismatch unless every other one, and the objects
    table's changelog if it exists yet (Faust creates it at the first start; one made by hand, or left from before
    TOPIC_PARTITIONS changed, may differ), has TOPIC_PARTITIONS partitions.

    A changelog with another count is assigned apart from the events: a worker would recover other partitions'
    states than those of the events it gets, and take known objects for new ones."""
    cluster = await admin._client.fetch_all_metadata()
    wanted = settings.topic_partitions
    counts = {topic: cluster.partitions_for_topic(topic) for topic in [*topics, settings.changelog_topic]}
    wrong = sorted(f"{topic} has {len(parts)}" for topic, parts in counts.items() if parts and len(parts) != wanted)
    if wrong:
        raise PartitionMismatch(
            f"every event topic and the objects table's changelog need TOPIC_PARTITIONS={wanted} partitions so "
            f"that the state co-partitions with the events, but {', '.join(wrong)}. Recreate the topics (one the "
            "brokers made by themselves with their defaults, after it was deleted while a client still used it: "
            "delete it with every worker stopped, and a worker creates it right), or set TOPIC_PARTITIONS to match "
            "if all of them have one count."
        )
    return [topic for topic in topics if counts[topic] is None]


#: The cyclic garbage collector's thresholds in a worker (Python's default: 700, 10, 10).
WORKER_GC_THRESHOLDS = (50_000, 20, 20)


def run_worker(settings: Settings) -> int:
    import faust
    import uvloop

    from streams.registry import HandlerModuleError, registry

    try:
        from streams.app import app, event_topics, table_writer
    except HandlerModuleError as exc:
        log.error("%s (HOOKSTREAM_HANDLERS=%s)", exc, ",".join(settings.handler_modules))
        return 2
    if not event_topics:
        log.error(
            "no handlers registered (HOOKSTREAM_HANDLERS=%s): nothing to consume", ",".join(settings.handler_modules)
        )
        return 2
    log.info("handling %d event types: %s", len(registry.event_types), ", ".join(registry.event_types))
    if settings.rebalance_grace < settings.handler_timeout:  # told, not warned: the embedded broker's 3 s does it
        log.info(
            "HANDLER_TIMEOUT (%gs) is over half of WORKER_REBALANCE_TIMEOUT (%gs): at a rebalance, a handler still "
            "running after %gs is cancelled, and its event runs again on the partition's next owner",
            settings.handler_timeout,
            settings.worker_rebalance_timeout,
            settings.rebalance_grace,
        )
    try:
        asyncio.run(prepare_answering_probes(settings, event_topics))
    except KeyboardInterrupt:
        return 130
    except (MissingTopics, PartitionMismatch, TopicCreationError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # the web port taken, say (Kafka's own errors are retried inside)
        log.error("cannot start: %s", exc)
        return 2
    uvloop.install()
    # Per event a worker allocates and frees many small containers (records, the decoded event, its state).
    # With the default thresholds the cyclic collector ran every few events, scanning young objects and, every
    # tenth of those, the older generations (py-spy: ~6% of the worker's samples). What exists by now lives as
    # long as the process and is frozen out of collections; young collections are made rarer. Refcounting
    # frees almost all of it anyway.
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)

    class Worker(faust.Worker):
        """Faust's worker. Its logging setup replaces ours, so the library floors (ops/logs.py: no aiokafka debug
        lines, they carry event bodies and credentials) are applied again after it."""

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            apply_library_floors(level)

    worker = Worker(app, loglevel=settings.log_level.lower())
    # Faust's terminal spinner sets the root logger to DEBUG so that every debug message spins it: every
    # aiokafka and Faust debug call would then build a log record, on every event (measured: ~5% of the time).
    worker.spinner = None
    tables = Path(app.conf.tabledir)
    local_state = settings.state_store.startswith("rocksdb")  # the memory store keeps nothing on disk
    lock = None
    if local_state:
        try:
            lock = hold_data_dir(Path(app.conf.datadir))
        except DataDirUnavailable as exc:
            log.error("%s", exc)
            return 2
        discard_state_after_unclean_stop(tables)
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        clean = exit_.code in (0, None) and app.crash_reason is None and table_writer.consistent
        if clean and local_state:
            mark_clean_stop(tables)
        raise
    finally:
        if lock is not None:
            lock.close()  # releases the lock
    return 0


class DataDirUnavailable(Exception):
    """The data directory is held by another worker, or cannot be made or written."""


def hold_data_dir(datadir: Path) -> IO[str]:
    """Lock ``datadir`` for this process's life (released when the process ends, however it ends).

    Two RocksDB workers on one directory would not share it: the second would take the first's live state for
    the leftovers of an unclean stop and delete it (``discard_state_after_unclean_stop``). So the second one
    refuses to start instead, saying why.
    """
    try:
        datadir.mkdir(parents=True, exist_ok=True)
        handle = (datadir / "worker.lock").open("a")
    except OSError as exc:  # read-only, not ours, a file in the way: one line, not a traceback
        raise DataDirUnavailable(f"cannot use {datadir} (WORKER_DATA_DIR): {exc.strerror or exc}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        message = f"another worker is using {datadir}: give each worker its own WORKER_DATA_DIR"
        raise DataDirUnavailable(message) from None
    return handle


#: Written by a RocksDB worker that stopped cleanly (exit 0, no crash, every changelog record of a stored value
#: confirmed stored), removed when one starts.
CLEAN_STOP_MARKER = "clean-stop"


def discard_state_after_unclean_stop(tables: Path) -> None:
    """Rebuild the local (RocksDB) state from the changelog unless the last run here stopped cleanly.

    A worker writes an object's state to its store before its changelog record reaches the broker (the record
    waits in a batch, streams/table.py). Killed in between, it leaves a store ahead of the changelog: restarted,
    it would take the event as a duplicate and never write its changelog record, and the state would differ
    from the changelog (and from what any other worker would recover). Found by the soak: 3 of 103,900 events
    after 4 SIGKILLs. The changelog is the truth, so after an unclean stop the local copy goes and recovery
    reads the changelog, as a new worker would.
    """
    marker = tables / CLEAN_STOP_MARKER
    if not marker.exists() and tables.is_dir() and any(p.name != CLEAN_STOP_MARKER for p in tables.iterdir()):
        log.warning(
            "the last worker run on %s did not stop cleanly: its local state may be ahead of the changelog; "
            "discarding it and recovering from the changelog",
            tables,
        )
        for entry in tables.iterdir():  # the contents, not the directory: it may be a mount point
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    marker.unlink(missing_ok=True)


def mark_clean_stop(tables: Path) -> None:
    tables.mkdir(parents=True, exist_ok=True)
    (tables / CLEAN_STOP_MARKER).touch()
