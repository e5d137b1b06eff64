"""``hookstream dev``: the whole local stack in one terminal, stopped together by Ctrl-C."""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ops.broker import BrokerError, BrokerNotInstalled, EmbeddedBroker
from ops.process import free_port, stop_process
from ops.settings import DEV_WEBHOOK_SECRET, Settings, is_configured

#: Settings the embedded broker needs (DESIGN.md): no idempotent producer, and short group timeouts, because it
#: completes a group join only after them (a join takes half the session timeout, measured). Its
#: under-reported end offsets are corrected in code (streams/consumer.py), so producers batch normally.
EMBEDDED_BROKER_ENV = {
    "KAFKA_ENABLE_IDEMPOTENCE": "false",
    "WORKER_REBALANCE_TIMEOUT": "3",
    "WORKER_SESSION_TIMEOUT": "6",
}


#: Where the dev stack listens unless the environment says otherwise.
LOCAL_ONLY_ENV = {"GATEWAY_HOST": "127.0.0.1", "WORKER_WEB_BIND": "127.0.0.1"}


def run_dev(settings: Settings, environ: dict[str, str], broker_port: int = 9092) -> int:
    """Start the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS or its _FILE names brokers), gateway and worker;
    wait for a signal."""
    # Local by default: the dev stack accepts the publicly known development secret, so it listens on loopback
    # only, unless told otherwise.
    env = LOCAL_ONLY_ENV | dict(environ)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # from here on a signal is noted, not raised: whatever starts below is stopped by the finally. SIGHUP: the
    # terminal closed; the children, in sessions of their own, would run on without this supervisor
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, request_stop)
    broker: EmbeddedBroker | None = None
    if not is_configured("KAFKA_BOOTSTRAP_SERVERS", environ):  # KAFKA_BOOTSTRAP_SERVERS_FILE counts too
        try:
            broker = EmbeddedBroker(broker_port)
            broker.start()
        except BrokerNotInstalled:
            raise
        except BrokerError as exc:
            print(f"hookstream: {exc}; using a free port instead", file=sys.stderr)
            broker = EmbeddedBroker(free_port())
            broker.start()
        env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        env.update(EMBEDDED_BROKER_ENV | {k: v for k, v in environ.items() if k in EMBEDDED_BROKER_ENV})
        print(f"hookstream: embedded Kafka broker listening on {broker.bootstrap_servers}", flush=True)
    gateway: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    status = 0
    try:
        handlers = HandlerSources(settings.handler_modules)
        gateway = _spawn(["gateway"], env)
        worker = _spawn(["worker"], env)
        worker_reported = False
        if _wait_listening(settings.gateway_port, gateway):
            kafka = f"{broker.bootstrap_servers} (embedded)" if broker else settings.kafka_bootstrap_servers
            _print_banner(
                settings,
                kafka,
                {k: env[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", *EMBEDDED_BROKER_ENV)} if broker else None,
            )
        while not stopping:
            if broker is not None and broker.process is not None and broker.process.poll() is not None:
                # it kept everything in memory: a new one would be empty, and the worker's state and offsets would
                # not match it (its recovery fails), so the stack stops with it
                print(
                    f"hookstream: the embedded broker exited with status {broker.process.returncode}, and with it "
                    "every topic, state and dead letter; stopping (start again for a fresh stack)",
                    file=sys.stderr,
                )
                status = 1
                break
            if gateway.poll() is not None:
                print(f"hookstream: gateway exited with status {gateway.returncode}; stopping", file=sys.stderr)
                status = 1
                break
            if worker.poll() is not None and not worker_reported:  # a handler that does not import, say
                print(
                    f"hookstream: worker exited with status {worker.returncode}; it starts again when a file of "
                    f"the handler modules ({', '.join(settings.handler_modules)}) changes (Ctrl-C stops everything)",
                    file=sys.stderr,
                )
                worker_reported = True
            changed = handlers.changed()
            if changed:
                print(f"hookstream: {', '.join(map(str, changed))} changed; restarting the worker", flush=True)
                stop_process(worker, timeout=30)
                if stopping:  # Ctrl-C meanwhile: no new worker
                    break
                worker = _spawn(["worker"], env)
                worker_reported = False
            time.sleep(0.5)
    finally:
        for child in (gateway, worker):  # the gateway first: no new event is taken while the worker stops
            if child is not None:
                stop_process(child, timeout=20)
        if broker is not None:
            broker.stop()
        print("hookstream: stopped", flush=True)
    return status


def _spawn(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # own session: Ctrl-C goes to this supervisor only, which stops the children in order (gateway first)
    return subprocess.Popen([sys.executable, "-m", "ops.cli", *args], env=env, start_new_session=True)


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Wait until something accepts connections on ``port`` (False if ``process`` died first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def _print_banner(settings: Settings, kafka: str, exports: dict[str, str] | None = None) -> None:
    url = f"http://127.0.0.1:{settings.gateway_port}/webhooks/stripe"
    # Only the public development secret is printed; a real one would end up in terminal scrollback and CI logs.
    secret = DEV_WEBHOOK_SECRET if settings.using_dev_secret else "(from STRIPE_WEBHOOK_SECRETS)"
    print(
        "\n"
        f"  gateway         {url}\n"
        f"  signing secret  {secret}\n"
        f"  gateway metrics http://127.0.0.1:{settings.gateway_port}/metrics\n"
        f"  worker          http://127.0.0.1:{settings.worker_web_port}/objects/<object id>  (and /metrics)\n"
        f"  kafka           {kafka}\n"
        "\n"
        "  Send a signed test event from another terminal, then look at the object's state:\n"
        f"    .venv/bin/hookstream trigger payment_intent.succeeded --object-id pi_demo --url {url}\n"
        f"    curl http://127.0.0.1:{settings.worker_web_port}/objects/pi_demo\n"
        "\n"
        + (
            "  Other hookstream commands (replay, audit) against this broker need its settings:\n"
            f"    export {' '.join(f'{k}={v}' for k, v in exports.items())}\n"
            "\n"
            if exports
            else ""
        )
        + "  The worker restarts when a handler file changes; Ctrl-C stops everything (the embedded broker keeps\n"
        "  everything in memory: topics, states and dead letters go with it).\n",
        flush=True,
    )


class HandlerSources:
    """The ``.py`` files of the handler modules (``HOOKSTREAM_HANDLERS``), found without importing them, and which
    of them changed since the last look: what makes the dev stack restart its worker. The modules are looked up
    again at every look, so one created later (or moved) is watched too."""

    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = list(modules)
        self._directory = os.getcwd()  # the workers' (they start here): not looked up again, it may be removed
        self._seen = self._snapshot()

    def changed(self) -> list[Path]:
        """Files added, changed or removed since the last call (after a moment's quiet: editors write in steps)."""
        now = self._snapshot()
        if now == self._seen:
            return []
        time.sleep(0.3)
        now = self._snapshot()
        changed = sorted(path for path in now.keys() | self._seen.keys() if now.get(path) != self._seen.get(path))
        self._seen = now
        return changed

    def _snapshot(self) -> dict[Path, int]:
        files: dict[Path, int] = {}
        for root in {root for module in self._modules for root in _source_roots(module, self._directory)}:
            paths = [root] if root.is_file() else _python_files(root)
            for path in paths:
                with contextlib.suppress(OSError):  # removed meanwhile: not there
                    files[path] = path.stat().st_mtime_ns
        return files


def _python_files(directory: Path) -> list[Path]:
    """The ``.py`` files under ``directory``; parts removed during the walk (a checkout, a cache) are skipped."""
    return [
        Path(folder, name)
        for folder, _, names in os.walk(directory)  # os.walk ignores directories it cannot list
        for name in names
        if name.endswith(".py")
    ]


def _source_roots(module: str, directory: str) -> list[Path]:
    """Where the worker, started with ``python -m`` from here, finds a module's top-level package: the
    directories of a package (a namespace package may have several), or a module's file."""
    top = module.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, [directory, *sys.path])  # the working directory first
    if spec is None:
        with contextlib.suppress(ImportError, ValueError):  # an installed finder's (editable installs)
            spec = importlib.util.find_spec(top)
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(location) for location in spec.submodule_search_locations]
    return [Path(spec.origin)] if spec.origin else []
