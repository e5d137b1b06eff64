"""Build ``ops/grafana/hookstream.json``, the hookstream Grafana dashboard (Grafana 11+, schemaVersion 39).

Dashboard as code without a dependency: panels are declared below as data, and this script lays them out and
writes the JSON Grafana imports. The JSON is committed (the Helm chart copies it, Grafana imports it as is);
edit this file and run it, never the JSON by hand. ``--check`` exits non-zero when the JSON is stale
(``tests/test_dashboard.py`` runs it).

    .venv/bin/python ops/grafana/build.py          # rewrite hookstream.json
    .venv/bin/python ops/grafana/build.py --check  # is it up to date?

Every query uses the ``$datasource`` variable, every selector the ``$namespace`` and ``$release`` variables (``sel``
adds them: in a Prometheus that watches several releases, even two in one namespace, panels never sum across them)
and ``$topic`` where it applies; metric names are DESIGN.md's (and those of tests/observability.py's
BEYOND_DESIGN).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).with_name("hookstream.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
#: In every selector (``sel``). All is ``.*``, which also matches series without a namespace label (a plain
#: Prometheus: an absent label is the empty string).
NAMESPACE = 'namespace=~"$namespace"'
#: In every selector (``sel``) too. A release's Prometheus jobs are ``<release>-gateway`` and ``<release>-worker``
#: (the chart's ServiceMonitor), so the variable lists what comes before those suffixes; All (``.*``) matches any
#: job, also one named otherwise by a hand-written scrape configuration.
RELEASE = 'job=~"$release(-gateway|-worker)?"'
TOPIC = 'topic=~"$topic"'
DEAD = 'outcome="dead_lettered"'
RETRIED = 'outcome="retried"'
FIVE_XX = 'status=~"5.."'
NOT_RETRIED = 'outcome!="retried"'
QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 12
    height: int = 8
    stack: bool = False
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    min_zero: bool = True


@dataclass
class Row:
    title: str
    panels: list[Panel]


def sel(metric: str, *matchers: str) -> str:
    """``metric{namespace=~"$namespace", job=~"$release...", m1, m2}``: every series a panel reads is selected by
    namespace and release."""
    return f"{metric}{{{', '.join((NAMESPACE, RELEASE, *matchers))}}}"


def rate(selector: str) -> str:
    return f"rate({selector}[{RATE}])"


def quantiles(bucket_selector: str, what: str) -> list[Target]:
    """p50/p95/p99 of a histogram, aggregated over every series but ``le``."""
    return [
        Target(f"histogram_quantile({q}, sum by (le) ({rate(bucket_selector)}))", f"p{round(q * 100)} {what}")
        for q in QUANTILES
    ]


PROCESSED = "hookstream_events_processed_total"
LAG = "hookstream_consumer_lag"
REQUESTS = "hookstream_gateway_requests_total"
SIGNATURE_FAILURES = "hookstream_gateway_signature_failures_total"
PUBLISHED = "hookstream_events_published_total"
READY = "hookstream_gateway_ready"
SKIPPED = "hookstream_records_skipped_total"
_PARTITION = "namespace, topic, partition"
#: Records behind commits held for 10 minutes (records waited at every scrape and no worker's commit moved: the
#: alert's test), per topic; 0 for a topic with none.
HELD = (
    f"sum by (topic) (min by ({_PARTITION}) (min_over_time({sel(LAG, TOPIC)}[10m])) > 0 unless on ({_PARTITION}) "
    f"max by ({_PARTITION}) (changes({sel('hookstream_committed_offset', TOPIC)}[10m])) > 0) "
    f"or sum by (topic) (0 * {sel(LAG, TOPIC)})"
)
#: Prometheus job names of our targets (as in ops/prometheus/alerts.yaml).
JOBS = 'job=~".*hookstream.*(gateway|worker).*"'
#: The release of a job (Grafana lists what the group captures; a job named otherwise is not listed).
RELEASE_OF_JOB = "/^(.*)-(?:gateway|worker)$/"

ROWS = [
    Row(
        "Overview",
        [
            Panel(
                "Published / s",
                "Events the broker acknowledged (the gateway answered 200), all selected topics.",
                [Target(f"sum({rate(sel(PUBLISHED, TOPIC))}) or vector(0)")],
                unit="reqps",
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Processed / s",
                "Events the workers finished, any outcome except retried (a retry is not a finish).",
                [Target(f"sum({rate(sel(PROCESSED, TOPIC, NOT_RETRIED))}) or vector(0)")],
                unit="reqps",
                kind="stat",
                width=4,
                height=4,
            ),
            Panel(
                "Consumer lag",
                "Records published and not yet committed by the workers, all selected topics.",
                [Target(f"sum({sel(LAG, TOPIC)}) or vector(0)")],
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "green"), (1000, "orange"), (10000, "red")],
            ),
            Panel(
                "Dead letters in range",
                "Events sent to the dead-letter topic in the dashboard's time range: fix, then `hookstream replay`.",
                [Target(f"sum(increase({sel(PROCESSED, TOPIC, DEAD)}[$__range])) or vector(0)")],
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "green"), (1, "red")],
            ),
            Panel(
                "Gateway 5xx ratio",
                "Share of gateway answers that were 5xx (503: Kafka did not acknowledge in time; Stripe retries).",
                [
                    Target(
                        f"(sum({rate(sel(REQUESTS, FIVE_XX))}) or vector(0))"
                        f" / clamp_min(sum({rate(sel(REQUESTS))}), 1e-9)"
                    )
                ],
                unit="percentunit",
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
            ),
            Panel(
                "Signature failures / s",
                "Deliveries refused because of their Stripe-Signature (any reason).",
                [Target(f"sum({rate(sel(SIGNATURE_FAILURES))}) or vector(0)")],
                unit="reqps",
                kind="stat",
                width=4,
                height=4,
                thresholds=[(None, "green"), (0.1, "orange"), (1, "red")],
            ),
        ],
    ),
    Row(
        "Throughput",
        [
            Panel(
                "Events published / s by topic",
                "Acknowledged by Kafka (acks=all) and answered 200 by the gateway.",
                [Target(f"sum by (topic) ({rate(sel(PUBLISHED, TOPIC))})", "{{topic}}")],
                unit="reqps",
            ),
            Panel(
                "Events processed / s by topic and outcome",
                "ok: applied; duplicate: event id already applied; stale: older than the applied state; unhandled: "
                "no handler for the type; retried: a failed attempt; dead_lettered: sent to the dead-letter topic.",
                [Target(f"sum by (topic, outcome) ({rate(sel(PROCESSED, TOPIC))})", "{{topic}} {{outcome}}")],
                unit="reqps",
                stack=True,
            ),
        ],
    ),
    Row(
        "Lag",
        [
            Panel(
                "Consumer lag per topic",
                "Log end offset minus committed offset, summed over partitions (refreshed even when idle).",
                [Target(f"sum by (topic) ({sel(LAG, TOPIC)})", "{{topic}}")],
                width=8,
            ),
            Panel(
                "Max partition lag per topic",
                "The worst partition: one stuck object (a handler retrying) holds back its whole partition.",
                [Target(f"max by (topic) ({sel(LAG, TOPIC)})", "{{topic}}")],
                width=8,
            ),
            Panel(
                "Records behind a held commit per topic",
                "Records waiting in partitions whose committed offset did not move in 10 minutes while records waited "
                "at every scrape (alert HookstreamPartitionHeld): one event there does not finish (a handler retrying, "
                "an emit that never goes through), or its worker is still recovering its tables.",
                [Target(HELD, "{{topic}}")],
                width=8,
                thresholds=[(None, "green"), (1, "orange")],
            ),
        ],
    ),
    Row(
        "Failures",
        [
            Panel(
                "Dead letters / s by topic and event type",
                "Events that failed every attempt and went to the dead-letter topic.",
                [
                    Target(
                        f"sum by (topic, event_type) ({rate(sel(PROCESSED, TOPIC, DEAD))})",
                        "{{topic}} {{event_type}}",
                    )
                ],
                unit="reqps",
                width=7,
            ),
            Panel(
                "Dead letters waiting",
                "Dead letters no replay has taken yet (every worker of a release counts them all: its largest count). "
                "`hookstream replay --list` shows them; replay them, or --discard an event that must never apply.",
                [Target(f"sum(max by (namespace, job) ({sel('hookstream_dead_letters_pending')}))", "waiting")],
                width=6,
                thresholds=[(None, "green"), (1, "orange")],
            ),
            Panel(
                "Records gone before read",
                "Event records that expired by their topic's retention (or were deleted) before a worker read them, "
                "as counted by the workers running in the time range since each started (alert "
                "HookstreamRecordsSkipped): their events were acknowledged to Stripe and never processed. The "
                "workers' log says when they were published, to resend them from Stripe.",
                [Target(f"sum(max_over_time({sel(SKIPPED, TOPIC)}[$__range])) or vector(0)")],
                kind="stat",
                width=4,
                thresholds=[(None, "green"), (1, "red")],
            ),
            Panel(
                "Retries / s by topic and event type",
                "Failed handler attempts that will be tried again after a backoff.",
                [
                    Target(
                        f"sum by (topic, event_type) ({rate(sel(PROCESSED, TOPIC, RETRIED))})",
                        "{{topic}} {{event_type}}",
                    )
                ],
                unit="reqps",
                width=7,
            ),
        ],
    ),
    Row(
        "Latency",
        [
            Panel(
                "Handler latency",
                "Time in a handler per attempt (all event types), from hookstream_handler_seconds.",
                quantiles(sel("hookstream_handler_seconds_bucket"), "handler"),
                unit="s",
                width=8,
            ),
            Panel(
                "End-to-end latency",
                "From the gateway receiving an event until a worker finished it, from hookstream_end_to_end_seconds.",
                quantiles(sel("hookstream_end_to_end_seconds_bucket", TOPIC), "end-to-end"),
                unit="s",
                width=8,
            ),
            Panel(
                "Publish latency",
                "From handing an event to the producer until Kafka acknowledged it (the gateway's answer waits).",
                quantiles(sel("hookstream_gateway_publish_seconds_bucket", TOPIC), "publish"),
                unit="s",
                width=8,
            ),
        ],
    ),
    Row(
        "Gateway",
        [
            Panel(
                "Gateway requests / s by status",
                "Every answer to webhook traffic (404, 405, 408, 413 and 431 included); health checks and scrapes are "
                "not counted.",
                [Target(f"sum by (status) ({rate(sel(REQUESTS))})", "{{status}}")],
                unit="reqps",
                stack=True,
                width=8,
            ),
            Panel(
                "Signature failures / s by reason",
                "missing_header, malformed_header, no_v1_signature, no_matching_signature (wrong secret? "
                "rotation?), timestamp_outside_tolerance (clock skew, replays).",
                [Target(f"sum by (reason) ({rate(sel(SIGNATURE_FAILURES))})", "{{reason}}")],
                unit="reqps",
                width=8,
            ),
            Panel(
                "Gateways ready",
                "Gateways that can publish to Kafka (what /readyz answers) against all gateways. In a Kafka outage "
                "/readyz fails, Kubernetes stops routing webhooks and the request counters stop: only this shows it.",
                [Target(f"sum({sel(READY)})", "ready"), Target(f"count({sel(READY)})", "gateways")],
                width=8,
            ),
        ],
    ),
    Row(
        "Workers",
        [
            Panel(
                "In-flight events per worker",
                "Events taken from Kafka and not yet finished (bounded by WORKER_MAX_INFLIGHT: back-pressure).",
                [Target(f"sum by (instance) ({sel('hookstream_inflight_events')})", "{{instance}}")],
                width=8,
            ),
            Panel(
                "Active actors per worker",
                "Objects with events queued or running.",
                [Target(f"sum by (instance) ({sel('hookstream_active_actors')})", "{{instance}}")],
                width=8,
            ),
            Panel(
                "Event loop lag per worker",
                "How late the worker's event loop ran a 0.25 s timer (worst over the last minute). Seconds mean a "
                "handler blocks it (time.sleep, a synchronous client): every object of that worker waits.",
                [Target(f"max by (instance) ({sel('hookstream_event_loop_lag_seconds')})", "{{instance}}")],
                unit="s",
                width=8,
                thresholds=[(None, "green"), (1, "orange")],
            ),
            Panel(
                "Targets up",
                "Prometheus scrape health of the gateway and worker targets (1 up, 0 down).",
                [Target(sel("up", JOBS), "{{job}} {{instance}}")],
                width=8,
                thresholds=[(None, "red"), (1, "green")],
            ),
        ],
    ),
]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": t.expr,
            "legendFormat": t.legend or "__auto",
            "range": not (t.instant or panel.kind == "stat"),
            "instant": t.instant or panel.kind == "stat",
            "refId": chr(ord("A") + i),
        }
        for i, t in enumerate(panel.targets)
    ]
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in panel.thresholds],
        },
        "mappings": [],
    }
    if panel.min_zero:
        defaults["min"] = 0
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "axisPlacement": "auto",
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options: dict[str, Any] = {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def _query_variable(name: str, label: str, query: str, regex: str = "") -> dict[str, Any]:
    """A variable listing ``query``'s label values (or what ``regex``'s group captures of them), several or All
    (``.*``: also matches a series without the label)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "hide": 0,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": regex,
        "sort": 1,
    }


def _templating() -> dict[str, Any]:
    # namespace: of our scrape targets (also before any event); none without a namespace label, All is then .*
    namespace_query = f"label_values(up{{{JOBS}}}, namespace)"
    # releases: the jobs of our scrape targets in the selected namespaces, without their -gateway / -worker
    release_query = f"label_values(up{{{NAMESPACE}, {JOBS}}}, job)"
    topic_query = f"label_values({sel(PUBLISHED)}, topic)"  # the topics of the selected namespaces and releases
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
            },
            _query_variable("namespace", "Namespace", namespace_query),
            _query_variable("release", "Release", release_query, regex=RELEASE_OF_JOB),
            _query_variable("topic", "Topic", topic_query),
        ]
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "11.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "hookstream: Stripe webhooks through the gateway into Kafka and the stream workers.",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["hookstream", "stripe", "kafka"],
        "templating": _templating(),
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": "hookstream",
        "uid": "hookstream",
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).as_posix()}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
