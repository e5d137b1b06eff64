"""The Grafana dashboard and the alert rules against a running stack: embedded broker, gateway, worker and a real
Prometheus scraping them every second. Every panel query must return data; every alert expression must be a
query Prometheus accepts and evaluates without error. Needs prometheus (ops/setup/prometheus.sh)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.signature import sign
from ops.fixtures import build_event, encode
from tests.observability import ALERTS, DASHBOARD, PrometheusProcess, contract_violations, start_prometheus
from tests.support import REPO, SECRET, WEBHOOK, BrokerInfo, GatewayProcess, start_gateway, start_worker, wait_for

#: What Grafana would put in for its built-in variables (scrape interval 1s here).
BUILTINS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
#: Every selector of every panel query (and of the topic variable) must carry these matchers.
SCOPE_MATCHERS = ('namespace=~"$namespace"', 'job=~"$release(-gateway|-worker)?"')
#: The releases the running stack's Prometheus sees: its Prometheus jobs are ``<release>-gateway`` and
#: ``<release>-worker``, as the chart's ServiceMonitor names them.
RELEASES = ("hookstream", "hookstream-canary")  # one a prefix of the other, as prod and prod-canary
#: A series a panel reads (a hookstream metric or a scrape's ``up``), with its matchers if any.
_SERIES = re.compile(r"\b(hookstream_[a-zA-Z0-9_]+|up)\b(\{[^}]*\})?")


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in panels if p["type"] != "row"]


def _targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in _panels(dashboard) for t in p["targets"]]


def _grafana_regex_escape(value: str) -> str:
    """How Grafana's Prometheus data source puts one selected value of a multi-value variable into a query
    (prometheusRegularEscape): regex metacharacters escaped, backslashes doubled for the PromQL string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def _substitute(expr: str, topic: str, namespace: str = ".*", release: str = ".*") -> str:
    """Grafana's interpolation: built-ins, and ``$topic`` / ``$namespace`` / ``$release`` as All (``.*``) or one
    escaped value."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    for name, value in (("topic", topic), ("namespace", namespace), ("release", release)):
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


def _unscoped_selectors(expr: str) -> list[str]:
    """The series selectors of an expression that do not select on ``$namespace`` and ``$release``."""
    return [m.group(0) for m in _SERIES.finditer(expr) if not all(s in (m.group(2) or "") for s in SCOPE_MATCHERS)]


# --- static checks: fast, no processes ---------------------------------------------------------------------


def test_dashboard_json_is_built_from_build_py() -> None:
    result = subprocess.run(
        [sys.executable, "ops/grafana/build.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_variables_and_datasources() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["id"] is None
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "release", "topic"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"], name
        assert variable["allValue"] == ".*", f"{name}: All must also match series without the label"
        assert variable["datasource"]["uid"] == "${datasource}", name
        assert variable["query"]["query"] == variable["definition"], name
    namespace, topic = variables["namespace"], variables["topic"]
    assert re.fullmatch(r"label_values\((hookstream_\w+|up)(\{[^}]*\})?, namespace\)", namespace["definition"])
    assert "$" not in namespace["definition"]
    # the releases of the selected namespaces: the jobs of our targets, without their -gateway / -worker suffix
    release = variables["release"]
    assert re.fullmatch(r'label_values\(up\{namespace=~"\$namespace", job=~"[^"]+"\}, job\)', release["definition"])
    assert release["regex"] == "/^(.*)-(?:gateway|worker)$/"
    # the topics of the selected namespaces and releases: topic comes after both, which it reads
    assert re.fullmatch(r"label_values\(hookstream_\w+\{[^}]*\}, topic\)", topic["definition"])
    assert _unscoped_selectors(topic["definition"]) == []
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names.index("datasource") < names.index("namespace") < names.index("release") < names.index("topic")

    panels = _panels(dashboard)
    ids = [p["id"] for p in dashboard["panels"]] + [p["id"] for p in panels if p not in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert contract_violations(target["expr"]) == [], (panel["title"], target["expr"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    exprs = " ".join(expr for _, expr in _targets(dashboard))
    assert exprs.count('topic=~"$topic"') >= 8, "the topic variable must filter the per-topic panels"
    for metric in (
        "hookstream_events_published_total",
        "hookstream_events_processed_total",
        "hookstream_consumer_lag",
        "hookstream_handler_seconds_bucket",
        "hookstream_end_to_end_seconds_bucket",
        "hookstream_gateway_publish_seconds_bucket",
        "hookstream_gateway_requests_total",
        "hookstream_gateway_signature_failures_total",
        "hookstream_inflight_events",
        "hookstream_active_actors",
        "hookstream_gateway_ready",
    ):
        assert metric in exprs, f"no panel shows {metric}"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in exprs


def test_every_panel_query_selects_on_the_namespace_and_release_variables() -> None:
    """In a Prometheus that watches several releases (prod, staging, a canary beside prod in its namespace), no
    panel sums across them: every series every panel reads is selected by ``$namespace`` and ``$release``."""
    targets = _targets(_dashboard())
    for name, expr in targets:
        assert _SERIES.search(expr), f"{name} reads no series: {expr}"
        assert _unscoped_selectors(expr) == [], (name, expr)
    assert _unscoped_selectors('sum(rate(hookstream_gateway_requests_total{status="500"}[1m]))')
    assert _unscoped_selectors("sum(hookstream_inflight_events)")
    assert _unscoped_selectors('sum(hookstream_inflight_events{namespace=~"$namespace"})')


def test_gateway_readiness_panel_is_with_the_gateway_panels() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    titles = [p["title"] for p in panels]
    ready = panels[titles.index("Gateways ready")]
    exprs = [t["expr"] for t in ready["targets"]]
    assert any(e.startswith("sum(hookstream_gateway_ready{") for e in exprs), exprs
    assert any(e.startswith("count(hookstream_gateway_ready{") for e in exprs), exprs
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    row = max(i for i in rows if i < titles.index("Gateways ready"))
    assert panels[row]["title"] == "Gateway"


# --- against a running stack -------------------------------------------------------------------------------


def _post(gateway: GatewayProcess, event: dict[str, Any], secret: str = SECRET, signed: bool = True) -> int:
    body = encode(event)
    headers = {"Stripe-Signature": sign(body, secret)} if signed else {}
    return gateway.request("POST", WEBHOOK, body, headers).status


def _drive_traffic(gateway: GatewayProcess, run: str, waves: int = 3) -> dict[str, int]:
    """Good, poisoned, duplicate, unhandled, unconsumed and badly signed deliveries, in waves a second apart so
    Prometheus sees the counters move."""
    sent = {"ok": 0, "poison": 0, "duplicate": 0, "unhandled": 0, "refused": 0}
    previous: dict[str, Any] | None = None
    for wave in range(waves):
        for i in range(8):
            event = build_event(
                "charge.updated", object_id=f"ch_{run}_{wave}_{i}", object_fields={"metadata": {"seq": "0"}}
            )
            assert _post(gateway, event) == 200
            sent["ok"] += 1
        poison = build_event(
            "charge.updated",
            object_id=f"ch_{run}_poison_{wave}",
            object_fields={"metadata": {"seq": "1", "fail": "true"}},
        )
        assert _post(gateway, poison) == 200
        sent["poison"] += 1
        if previous is not None:  # last wave's event again (same id, applied by now): a duplicate for the worker
            assert _post(gateway, previous) == 200
            sent["duplicate"] += 1
        assert _post(gateway, build_event("charge.pending", object_id=f"ch_{run}_pending_{wave}")) == 200
        sent["unhandled"] += 1
        assert _post(gateway, build_event("payment_intent.succeeded", object_id=f"pi_{run}_{wave}")) == 200
        assert _post(gateway, build_event("charge.updated"), secret="whsec_not_the_secret") == 400
        assert _post(gateway, build_event("charge.updated"), signed=False) == 400
        sent["refused"] += 2
        previous = build_event("charge.updated", object_id=f"ch_{run}_dup_{wave}")
        assert _post(gateway, previous) == 200
        time.sleep(1.2)
    return sent


def _has_finite_data(answer: dict[str, Any]) -> bool:
    if answer.get("status") != "success":
        return False
    return any(math.isfinite(float(sample["value"][1])) for sample in answer["data"]["result"])


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_every_panel_and_alert_query_works_against_a_running_stack(broker: BrokerInfo, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    prefix = f"tdash-{run}."
    charge_topic = f"{prefix}charge"
    worker_env = {
        "HOOKSTREAM_TEST_FIXED": str(tmp_path / "never-fixed"),
        "HANDLER_MAX_ATTEMPTS": "2",
        "HANDLER_RETRY_BACKOFF": "0.05",
    }
    with (
        start_worker(broker, f"tdash-{run}", prefix, wait_ready=False, **worker_env) as worker,
        start_gateway(broker, TOPIC_PREFIX=prefix) as gateway,
    ):
        worker.wait_ready()
        # two releases in one Prometheus (and one namespace: here none), the canary's jobs scraping the same
        # processes again: its series double every sum unless the release variable tells them apart
        jobs = {
            f"{release}-{part}": f"127.0.0.1:{process.port}"
            for release in RELEASES
            for part, process in (("gateway", gateway), ("worker", worker))
        }
        with start_prometheus(tmp_path, jobs, rule_files=(ALERTS,)) as prometheus:
            _wait_for_targets(prometheus, set(jobs))
            sent = _drive_traffic(gateway, run)
            expected = {"dead_lettered": sent["poison"], "duplicate": sent["duplicate"], "unhandled": sent["unhandled"]}

            def finished() -> dict[str, float]:
                return {o: worker.metric_sum("hookstream_events_processed_total", outcome=o) for o in expected}

            wait_for(
                lambda: all(finished()[o] >= n for o, n in expected.items()),
                30,
                "poison events dead-lettered, duplicates and unhandled events counted",
            )
            assert finished() == expected
            time.sleep(2)  # two more scrapes

            _check_panels(prometheus, charge_topic)
            _check_namespace_matcher(prometheus)
            _check_release_matcher(prometheus)
            _check_variables(prometheus, charge_topic)
            _check_alert_rules(prometheus, charge_topic)


def _wait_for_targets(prometheus: PrometheusProcess, jobs: set[str]) -> None:
    def up() -> set[str]:
        answer = prometheus.query("up == 1")
        return {s["metric"]["job"] for s in answer.get("data", {}).get("result", [])}

    try:
        wait_for(lambda: up() >= jobs, 30, "Prometheus scraping the gateway and the worker")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{prometheus.output()[-3000:]}") from None


def _check_panels(prometheus: PrometheusProcess, charge_topic: str) -> None:
    """Every target of every panel, with $namespace as All (its allValue: here no series has a namespace label)
    and $topic as All and as one real topic, returns a finite sample; also without a final ``or vector(0)``,
    which would hide a selector that matches nothing."""
    dashboard = _dashboard()
    all_namespaces = next(v for v in dashboard["templating"]["list"] if v["name"] == "namespace")["allValue"]
    queries = []
    for name, expr in _targets(dashboard):
        variants = [(name, expr)]
        if expr.endswith(" or vector(0)"):
            variants.append((f"{name} without 'or vector(0)'", expr.removesuffix(" or vector(0)")))
        for label, text in variants:
            queries.append((label, _substitute(text, ".*", all_namespaces)))
            release = _grafana_regex_escape(RELEASES[0])
            queries.append((f"{label} release={RELEASES[0]}", _substitute(text, ".*", all_namespaces, release)))
            if "$topic" in text:
                escaped = _grafana_regex_escape(charge_topic)
                queries.append((f"{label} topic={charge_topic}", _substitute(text, escaped, all_namespaces)))
    pending = dict(queries)
    answers: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        for name, expr in list(pending.items()):
            answers[name] = prometheus.query(expr)
            if _has_finite_data(answers[name]):
                del pending[name]
        if pending:
            time.sleep(0.5)
    empty = {name: (pending[name], answers[name]) for name in pending}
    assert not empty, "panels without data:\n" + "\n".join(f"{n}: {q}\n  -> {a}" for n, (q, a) in empty.items())


def _check_namespace_matcher(prometheus: PrometheusProcess) -> None:
    """A plain Prometheus (this one) adds no namespace label; ``namespace=~".*"`` (All) still matches every
    series, since an absent label is the empty string."""
    names = sorted({m.group(1) for _, expr in _targets(_dashboard()) for m in _SERIES.finditer(expr)})
    labelled = prometheus.query('count({__name__=~"hookstream_.+|up", namespace!=""})')
    assert labelled["status"] == "success" and labelled["data"]["result"] == [], labelled
    for name in names:
        bare = prometheus.query(f"count({name})")
        selected = prometheus.query(f'count({name}{{namespace=~".*"}})')
        assert bare["status"] == selected["status"] == "success", (name, bare, selected)
        assert bare["data"]["result"], f"no series of {name}"
        assert selected["data"]["result"][0]["value"][1] == bare["data"]["result"][0]["value"][1], name


def _check_release_matcher(prometheus: PrometheusProcess) -> None:
    """Every series a panel reads, selected as the panels select it with ``$release`` as one release, comes from
    that release's jobs alone; as All (``.*``), from every release's."""
    names = sorted({m.group(1) for _, expr in _targets(_dashboard()) for m in _SERIES.finditer(expr)})
    ours = {f"{release}-{part}" for release in RELEASES for part in ("gateway", "worker")}
    for name in names:
        selector = f"{name}{{{', '.join(SCOPE_MATCHERS)}}}"  # the panels' other matchers may match nothing yet
        for release in (*RELEASES, None):
            value = ".*" if release is None else _grafana_regex_escape(release)
            answer = prometheus.query(f"count by (job) ({_substitute(selector, '.*', '.*', value)})")
            assert answer["status"] == "success", (selector, answer)
            jobs = {series["metric"]["job"] for series in answer["data"]["result"]}
            if release is None:
                assert jobs and {job.rsplit("-", 1)[0] for job in jobs} == set(RELEASES), (selector, jobs)
            else:
                assert jobs and jobs <= {f"{release}-gateway", f"{release}-worker"}, (selector, release, jobs)
            assert jobs <= ours, (selector, jobs)


def _check_variables(prometheus: PrometheusProcess, charge_topic: str) -> None:
    """The variables' label_values queries work: no namespace here (All is then .*), both releases, and this run's
    topic."""
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}

    def label_values(name: str) -> dict[str, Any]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", _substitute(variables[name]["definition"], ".*"))
        assert match, variables[name]["definition"]
        series, label = match.groups()
        return prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": series})

    namespaces = label_values("namespace")
    assert namespaces["status"] == "success" and namespaces["data"] == [], namespaces
    jobs = label_values("release")
    assert jobs["status"] == "success", jobs
    grafana_regex = re.compile(variables["release"]["regex"].strip("/"))  # Grafana lists the first group's capture
    releases = {m.group(1) for job in jobs["data"] if (m := grafana_regex.search(job))}
    assert releases == set(RELEASES), jobs
    topics = label_values("topic")
    assert topics["status"] == "success" and charge_topic in topics["data"], topics


def _check_alert_rules(prometheus: PrometheusProcess, charge_topic: str) -> None:
    """Prometheus loaded every rule of alerts.yaml, evaluates each without error, and accepts each expression as
    a query; the dead letters of this run fire HookstreamDeadLetters."""

    def rules() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    wait_for(lambda: all(r["health"] != "unknown" for r in rules()), 15, "every rule evaluated once")
    loaded = rules()
    assert len(loaded) >= 10
    for rule in loaded:
        assert rule["type"] == "alerting"
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        answer = prometheus.query(rule["query"])
        assert answer["status"] == "success", (rule["name"], answer)

    def dead_letter_alert() -> list[dict[str, Any]]:
        alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        return [
            a
            for a in alerts
            if a["labels"]["alertname"] == "HookstreamDeadLetters"
            and a["labels"].get("topic") == charge_topic
            and a["labels"].get("event_type") == "charge.updated"
            and a["state"] == "firing"
        ]

    wait_for(dead_letter_alert, 15, "HookstreamDeadLetters firing for this run's dead letters")
    assert "charge.updated" in dead_letter_alert()[0]["annotations"]["summary"]
