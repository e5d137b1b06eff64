"""Helpers for the dashboard and alert tests: the metric contract, PromQL metric names, a real Prometheus process.

Prometheus and promtool come from Debian's ``prometheus`` package (``ops/setup/prometheus.sh`` installs it).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.process import free_port, stop_process
from tests.support import REPO

DASHBOARD = Path(REPO) / "ops" / "grafana" / "hookstream.json"
ALERTS = Path(REPO) / "ops" / "prometheus" / "alerts.yaml"
ALERTS_TEST = Path(REPO) / "ops" / "prometheus" / "alerts_test.yaml"

#: DESIGN.md's metric table: name -> (labels, type).
CONTRACT: dict[str, tuple[frozenset[str], str]] = {
    "hookstream_gateway_requests_total": (frozenset({"status"}), "counter"),
    "hookstream_gateway_signature_failures_total": (frozenset({"reason"}), "counter"),
    "hookstream_gateway_publish_seconds": (frozenset({"topic"}), "histogram"),
    "hookstream_events_published_total": (frozenset({"topic", "event_type"}), "counter"),
    "hookstream_events_processed_total": (frozenset({"topic", "event_type", "outcome"}), "counter"),
    "hookstream_handler_seconds": (frozenset({"event_type"}), "histogram"),
    "hookstream_end_to_end_seconds": (frozenset({"topic"}), "histogram"),
    "hookstream_consumer_lag": (frozenset({"topic", "partition"}), "gauge"),
    "hookstream_inflight_events": (frozenset(), "gauge"),
    "hookstream_active_actors": (frozenset(), "gauge"),
}
#: Metrics the code exports that DESIGN.md's table does not list (yet), each with the reason rules may read it.
#: Keep this list short and ask for each one to be added to DESIGN.md.
BEYOND_DESIGN: dict[str, tuple[frozenset[str], str]] = {
    # gateway/metrics.py: 1 while the gateway can publish (what /readyz answers). A Kafka outage makes /readyz
    # fail, Kubernetes stops routing webhooks and the request counters stop: only this gauge shows it.
    "hookstream_gateway_ready": (frozenset(), "gauge"),
    # streams/metrics.py: dead letters no replay has taken. The dead-letter alert fires when one is written and ends
    # 10 minutes later; this gauge is what stays until someone replays or discards them.
    "hookstream_dead_letters_pending": (frozenset(), "gauge"),
    # streams/loop_watch.py: a handler that blocks the event loop stalls every object of its worker, and no
    # deadline can stop it (they are kept by that loop): nothing else shows it.
    "hookstream_event_loop_lag_seconds": (frozenset(), "gauge"),
    # streams/lag.py: the committed offset. An event that never finishes holds its partition's commit; at low traffic
    # its lag stays under every threshold and its topic still moves: only a commit that does not move shows it.
    "hookstream_committed_offset": (frozenset({"topic", "partition"}), "gauge"),
    # streams/consumer.py: records expired (or deleted) before a worker read them. Kafka's consumer then starts at
    # the log's first record without a word: lag falls as if they had been processed.
    "hookstream_records_skipped_total": (frozenset({"topic"}), "counter"),
}
#: What alert rules and panels may read.
READABLE = CONTRACT | BEYOND_DESIGN
#: Labels Prometheus adds to scraped series: job and instance always, namespace where Prometheus Operator (a
#: ServiceMonitor) or Kubernetes service discovery labels each target with its namespace (panels select on it).
SCRAPE_LABELS = frozenset({"job", "instance", "namespace"})
OUTCOMES = frozenset({"ok", "duplicate", "stale", "unhandled", "retried", "dead_lettered"})

_HOOKSTREAM_NAME = re.compile(r"\bhookstream_[a-zA-Z0-9_]+")
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def series_name_to_metric(name: str) -> str | None:
    """The contract metric (or BEYOND_DESIGN's) a series name belongs to (``x_bucket`` of histogram ``x``), or None."""
    if name in READABLE:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and READABLE.get(base, (None, ""))[1] == "histogram":
            return base
    return None


def metric_names(expr: str) -> set[str]:
    """Every ``hookstream_*`` series name an expression reads."""
    return set(_HOOKSTREAM_NAME.findall(expr))


def contract_violations(expr: str) -> list[str]:
    """Names outside DESIGN.md's table (and BEYOND_DESIGN), labels a metric does not have, outcomes that do not
    exist."""
    problems = []
    for name in metric_names(expr):
        if series_name_to_metric(name) is None:
            problems.append(f"{name} is not a DESIGN.md metric")
    for name, body in _SELECTOR.findall(expr):
        metric = series_name_to_metric(name)
        if metric is None:
            continue
        allowed = READABLE[metric][0] | SCRAPE_LABELS | ({"le"} if name.endswith("_bucket") else set())
        for label, op, value in _MATCHER.findall(body):
            if label not in allowed:
                problems.append(f"{name} has no label {label!r}")
            if label == "outcome" and op in ("=", "!=") and value not in OUTCOMES:
                problems.append(f"outcome {value!r} does not exist")
    return problems


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: run ops/setup/prometheus.sh (Debian package 'prometheus')"
    return path


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    assert path, "prometheus not found: run ops/setup/prometheus.sh (Debian package 'prometheus')"
    return path


@dataclass
class PrometheusProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Any = field(repr=False)

    def get(self, path: str, **params: str) -> dict[str, Any]:
        """GET an API path; the decoded JSON answer, also for 4xx/5xx (Prometheus answers errors as JSON)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return dict(json.load(answer))
        except urllib.error.HTTPError as error:
            return dict(json.load(error))

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))


@contextlib.contextmanager
def start_prometheus(
    workdir: Path, jobs: dict[str, str], rule_files: tuple[Path, ...] = (), interval: str = "1s"
) -> Iterator[PrometheusProcess]:
    """Run ``prometheus`` on a free port scraping ``jobs`` (job name -> host:port, path /metrics) every
    ``interval``, evaluating ``rule_files`` as often; stop it by PID afterwards."""
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
            for job, target in jobs.items()
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    prometheus = PrometheusProcess(port, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited ({process.returncode}):\n{prometheus.output()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus never became ready:\n{prometheus.output()[-3000:]}")
            time.sleep(0.1)
        yield prometheus
    finally:
        stop_process(process, timeout=10)
        log.close()
