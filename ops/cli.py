"""The ``hookstream`` command line."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from collections.abc import Sequence

from ops.logs import configure_logging
from ops.settings import ConfigError, Settings, split_secrets


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"hookstream: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    # The handler modules (HOOKSTREAM_HANDLERS) are looked for in the working directory first, as `python -m` and
    # uvicorn do: the console script alone looked only where hookstream is installed (another checkout's handlers,
    # or none of a project of its own). hookstream's own packages are imported first: a project's streams/ or
    # gateway.py must not stand in for them.
    for package in ("gateway", "streams"):
        importlib.import_module(package)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # As PID 1 (the image's ENTRYPOINT) a signal without a handler is ignored, so until a command installs its own
    # (uvicorn, Faust, dev, broker: theirs replace this one) SIGTERM would do nothing, e.g. while the worker waits
    # for Kafka. This one raises, as Ctrl-C raises KeyboardInterrupt, so asyncio.run and finally blocks clean up.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        status: int = args.run(args, settings)
    except Terminated:
        print("hookstream: stopped by SIGTERM", file=sys.stderr)
        return Terminated.STATUS
    except KeyboardInterrupt:  # Ctrl-C in a command that has no handler of its own (replay, audit): no traceback
        print("hookstream: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return status


class Terminated(SystemExit):
    """SIGTERM arrived before the command installed its own handler. A SystemExit, so that what catches Exception
    lets it through and asyncio's tasks re-raise it instead of keeping it; 143 (128 + SIGTERM) if nothing catches it.
    """

    STATUS = 128 + signal.SIGTERM


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(Terminated.STATUS)


def _parser() -> argparse.ArgumentParser:
    """Options say what to do, never a secret: secrets come from the environment or mounted files (NAME_FILE),
    because a command line is readable by every local user (ps, /proc/<pid>/cmdline) and lands in shell history.
    """
    parser = argparse.ArgumentParser(
        prog="hookstream",
        description="Stripe webhooks into Kafka, processed in order per object. "
        "Configuration, secrets included, comes from the environment (see README.md).",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    dev = commands.add_parser(
        "dev",
        help="run the local stack: embedded broker (unless KAFKA_BOOTSTRAP_SERVERS or its _FILE names brokers), "
        "gateway and a worker",
        description="What `make run` starts: the embedded broker (memory only: stopping dev loses every topic), "
        "the gateway on GATEWAY_PORT (8000) and a worker on WORKER_WEB_PORT (6066), on 127.0.0.1 unless "
        "GATEWAY_HOST / WORKER_WEB_BIND say otherwise. The worker restarts when a .py file of its handler modules "
        "(HOOKSTREAM_HANDLERS) changes; state and dead letters stay in the broker. Ctrl-C stops everything.",
    )
    dev.add_argument("--broker-port", type=int, default=9092, help="embedded broker port (default: 9092)")
    dev.set_defaults(run=_dev)

    gateway = commands.add_parser(
        "gateway",
        help="run the webhook gateway (GATEWAY_HOST:GATEWAY_PORT)",
        description="Serve POST /webhooks/stripe: verify the Stripe-Signature against STRIPE_WEBHOOK_SECRETS, publish "
        "the event to <TOPIC_PREFIX><object type> keyed by the object's id, and answer 200 once Kafka acknowledged it "
        "(503 with Retry-After when it did not within GATEWAY_PUBLISH_TIMEOUT). Also GET /healthz, /readyz, /metrics. "
        "Refused requests are logged at LOG_LEVEL=DEBUG (the answer's body says why, too); a 503 as a warning, an "
        "event too large for the brokers as an error.",
    )
    gateway.set_defaults(run=_gateway)

    worker = commands.add_parser(
        "worker",
        help="run a stream worker (Faust app streams.app:app; web port WORKER_WEB_PORT)",
        description="Create the topics the handlers need, then apply events to object states in order per object, "
        "with the handlers of HOOKSTREAM_HANDLERS; failures are retried (HANDLER_MAX_ATTEMPTS), then dead-lettered "
        "to <TOPIC_PREFIX>dlq. Serves GET /objects/<id>, /healthz, /readyz and /metrics on WORKER_WEB_PORT. "
        "SIGTERM stops it cleanly within HANDLER_TIMEOUT, plus 5 s for handlers that catch their cancellation and "
        "the final flush and commit (the Helm chart allows HANDLER_TIMEOUT + 20 s), which wait for Kafka while it "
        "does not answer.",
    )
    worker.set_defaults(run=_worker)

    replay = commands.add_parser(
        "replay",
        help="re-publish dead letters to the topics they came from",
        description="Read <TOPIC_PREFIX>dlq as consumer group <HOOKSTREAM_APP_ID>-replay and re-publish each dead "
        "letter to its source topic with its key, value and original headers plus replayed-at (where its "
        "end-to-end time starts), committing after each, so each is replayed once however often this runs. A dead "
        "letter stored without its value (value-omitted) is skipped and committed: the warning says where the "
        "original record is. Takes the dead letters there when it starts (one written meanwhile, say by a replayed "
        "event failing again, is left to the next run) and stops once it has caught up with them, or once another "
        "replay joins the group and takes its partitions (exit status 0). Exit status 2 when Kafka failed it.",
    )
    replay.add_argument("--limit", type=int, default=None, help="replay at most N dead letters (default: all)")
    replay_mode = replay.add_mutually_exclusive_group()
    replay_mode.add_argument(
        "--list",
        action="store_true",
        help="only show the dead letters not replayed yet (event, source, attempts, the error and its message): "
        "nothing is sent or committed",
    )
    replay_mode.add_argument(
        "--discard",
        action="append",
        default=[],
        metavar="EVENT_ID|POSITION",
        help="do not re-publish the dead letters of this event, or the one at this position as --list shows it, "
        "topic[partition]@offset (for a record without an event id); repeatable: passed over and committed, so that "
        "no later replay takes them either; one not among the dead letters waiting: exit status 1 before anything "
        "is replayed (with --limit, one waiting beyond the first N: exit status 1 after them)",
    )
    replay.set_defaults(run=_replay)

    audit = commands.add_parser(
        "audit",
        help="check that every acknowledged event was applied once (or dead-lettered); exit 1 if any is missing",
        description="Compare the event ids in the event topics (what the gateway acknowledged) with the objects "
        "table's changelog (what the workers applied) and the dead letters. Exit status 1 when an acknowledged "
        "event is missing or was applied twice, or records were deleted before the workers read them (gone), 2 "
        "when it could not check (a bad option, Kafka unreachable, a handler module that does not import).",
    )
    audit.add_argument(
        "--since", help="audit events acknowledged since T: ISO 8601 time or a duration ago (30m, 2h, 7d); default: all"
    )
    audit.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to SECONDS for pending events first"
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
    audit.add_argument("--show", type=int, default=20, metavar="N", help="ids listed per verdict (default: 20)")
    audit.set_defaults(run=_audit)

    scaffold = commands.add_parser(
        "new-handler", help="write handlers/<module>.py and its test for a Stripe event type"
    )
    scaffold.add_argument(
        "event_type", help="a Stripe event type nobody handles yet (or not for --object-type), e.g. payout.paid"
    )
    scaffold.add_argument(
        "--object-type",
        metavar="OBJECT",
        help="the object its events carry (data.object.object, which names the topic), for a type newer than "
        "hookstream's list of Stripe's event types (ops/stripe/event-types.txt), one without an example object, or "
        "one whose events carry several kinds (customer.source.*: card, bank_account or source; "
        "account.external_account.*: card or bank_account); a kind other than the example object's, or another "
        "kind of a type that has a module, gets its own: handlers/<module>_<kind>.py",
    )
    scaffold.set_defaults(run=_new_handler)

    broker = commands.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu, memory only)")
    broker.add_argument("--port", type=int, default=9092, help="port to listen on (default: 9092)")
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    broker.set_defaults(run=_broker)

    trigger = commands.add_parser(
        "trigger",
        help="send a realistic signed Stripe event of the given type to a gateway",
        allow_abbrev=False,  # else "--secret whsec_..." would be taken for --secret-file
    )
    trigger.add_argument(
        "event_type", help="an event type Stripe sends (ops/stripe/event-types.txt), e.g. payment_intent.succeeded"
    )
    trigger.add_argument("--object-id", help="id of the object the event is about (default: the fixture's)")
    trigger.add_argument(
        "--unlisted",
        action="store_true",
        help="send an event type that ops/stripe/event-types.txt does not list (one newer than hookstream's list)",
    )
    trigger.add_argument("--url", help="webhook URL (default: http://127.0.0.1:$GATEWAY_PORT/webhooks/stripe)")
    trigger.add_argument(
        "--age",
        type=_seconds_ago,
        default=0,
        metavar="SECONDS",
        help="the event happened this many seconds ago (default: now); one older than its object's last applied "
        "event is stale, as Stripe's late retries are",
    )
    trigger.add_argument(
        "--secret-file",
        help="file holding the signing secret, or several like STRIPE_WEBHOOK_SECRETS (the first "
        "signs); default: the first of STRIPE_WEBHOOK_SECRETS (or of STRIPE_WEBHOOK_SECRETS_FILE). There is no "
        "option for the secret itself: command lines are visible to every local user.",
    )
    trigger.set_defaults(run=_trigger)
    return parser


def _dev(args: argparse.Namespace, settings: Settings) -> int:
    from ops.broker import BrokerNotInstalled
    from ops.dev import run_dev

    try:
        return run_dev(settings, dict(os.environ), args.broker_port)
    except BrokerNotInstalled as exc:
        print(f"hookstream: {exc} (or name a broker in KAFKA_BOOTSTRAP_SERVERS)", file=sys.stderr)
        return 2


def _gateway(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.server import serve

    # uvicorn handles SIGTERM itself, and once it has shut down it raises the signal again for the handler that was
    # there before it: main()'s would report a graceful stop as "stopped by SIGTERM" (143). Ignored, it is exit 0.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(settings)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    return run_worker(settings)


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from ops.replay import run_replay

    return run_replay(settings, args.limit, args.list, args.discard)


def _audit(args: argparse.Namespace, settings: Settings) -> int:
    from aiokafka.errors import KafkaError

    from ops.audit import AuditError, run_audit
    from streams.registry import HandlerModuleError

    try:
        return run_audit(settings, args.since, args.wait, args.json, args.show)
    except (AuditError, ValueError, HandlerModuleError) as exc:  # not 1 either: nothing was checked
        print(f"hookstream audit: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # not 1: that says an event is missing, and nothing was checked
        print(f"hookstream audit: Kafka at {settings.kafka_bootstrap_servers}: {exc!r}", file=sys.stderr)
        return 2


def _new_handler(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from ops.scaffold import ScaffoldError, kinds_left_unhandled, new_handler

    try:
        handler, test = new_handler(args.event_type, Path.cwd(), settings.handler_modules, args.object_type)
    except ScaffoldError as exc:
        print(f"hookstream: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {handler}\nwrote {test}\nnext: edit both, then run .venv/bin/pytest {test}")
    kind, others = kinds_left_unhandled(args.event_type, args.object_type)
    if others:
        print(
            f"note: it handles the {kind} events of {args.event_type} only; for the others: --object-type "
            f"{'|'.join(others)}"
        )
    if not {"handlers", f"handlers.{handler.stem}"} & set(settings.handler_modules):
        print(
            f"note: HOOKSTREAM_HANDLERS ({','.join(settings.handler_modules)}) does not name handlers: the worker "
            "will not load this module until it does"
        )
    return 0


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from ops.broker import BrokerError, BrokerNotInstalled, EmbeddedBroker

    broker = EmbeddedBroker(args.port, args.host)
    received: list[int] = []  # from here on a signal is noted, so that the broker, once started, is stopped
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        broker.start()
    except BrokerError as exc:
        print(f"hookstream: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BrokerNotInstalled) else 1
    try:
        print(
            f"hookstream: Kafka broker listening on {broker.bootstrap_servers} (memory storage); Ctrl-C stops it",
            flush=True,
        )
        while not received and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.2)
    finally:
        crashed = broker.process is not None and broker.process.poll() is not None
        broker.stop()
    if crashed:
        print(f"hookstream: the broker exited unexpectedly:\n{broker.output()[-2000:]}", file=sys.stderr)
        return 1
    print("hookstream: broker stopped", flush=True)
    return 0


def _seconds_ago(text: str) -> int:
    """``--age``: a whole number of seconds, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return int(text)


def _trigger(args: argparse.Namespace, settings: Settings) -> int:
    from ops.fixtures import UnknownEventType, event_types, not_an_event_type
    from ops.trigger import trigger

    if args.event_type not in event_types() and not args.unlisted:  # a typo would be sent, taken, counted unhandled
        print(f"hookstream: {not_an_event_type(args.event_type)} (--unlisted sends it all the same)", file=sys.stderr)
        return 2

    url = args.url or f"http://127.0.0.1:{settings.gateway_port}/webhooks/stripe"
    secret = settings.stripe_webhook_secrets[0]
    if args.secret_file:
        try:
            with open(args.secret_file, encoding="utf-8") as f:
                secrets = split_secrets(f.read())
        except OSError as exc:
            # the value is not echoed: it may be a secret given by mistake instead of a path
            print(f"hookstream: cannot read the --secret-file: {exc.strerror}", file=sys.stderr)
            return 2
        if not secrets:
            print("hookstream: the --secret-file holds no secret", file=sys.stderr)
            return 2
        secret = secrets[0]
    try:
        result = trigger(url, secret, args.event_type, args.object_id, args.age)
    except UnknownEventType as exc:
        print(f"hookstream: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hookstream: cannot reach {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    print(f"{result.status} {result.body}")
    about = f"object {result.object_id}" if result.object_id else "an object without an id (keyed by the event id)"
    print(f"event {result.event_id} ({args.event_type}) about {about}", file=sys.stderr)
    return 0 if result.status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
