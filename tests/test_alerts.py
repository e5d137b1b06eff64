"""The Prometheus alert rules: valid for promtool, their unit tests pass (and can fail), and they read only
DESIGN.md's metrics (and tests/observability.py's BEYOND_DESIGN). Needs promtool (ops/setup/prometheus.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.metrics import GatewayMetrics
from streams.metrics import WorkerMetrics
from tests.observability import ALERTS, ALERTS_TEST, BEYOND_DESIGN, contract_violations, metric_names, promtool


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules() -> None:
    result = _run("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _run("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tested = yaml.safe_load(ALERTS_TEST.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tested["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules()}
    assert alerts - firing == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


def test_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The promtool tests are not vacuous: a lag threshold raised a hundredfold makes them fail."""
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    text = ALERTS.read_text()
    broken = text.replace(
        "sum by (namespace, job, topic) (hookstream_consumer_lag) > 1000\n",
        "sum by (namespace, job, topic) (hookstream_consumer_lag) > 100000\n",
    )
    assert broken != text
    (tmp_path / ALERTS.name).write_text(broken)
    result = _run("test", "rules", str(tmp_path / ALERTS_TEST.name))
    assert result.returncode != 0
    assert "HookstreamConsumerLagHigh" in result.stdout + result.stderr


def test_metrics_beyond_design_are_really_exported() -> None:
    """BEYOND_DESIGN lists only what the gateway and the workers export, with its type and labels."""
    worker = WorkerMetrics()
    worker.committed_offset.labels(topic="stripe.charge", partition="0").set(0)  # a labelled metric's first child
    worker.records_skipped.labels(topic="stripe.charge")
    exported = {family.name: family for metrics in (GatewayMetrics(), worker) for family in metrics.registry.collect()}
    for name, (labels, kind) in BEYOND_DESIGN.items():
        family = exported.get(name.removesuffix("_total") if kind == "counter" else name)
        assert family is not None and family.type == kind, name
        samples = [sample for sample in family.samples if sample.name == name or kind != "counter"]
        assert samples and {frozenset(sample.labels) for sample in samples} == {labels}, name


#: What rules may read besides hookstream's metrics: Prometheus's own ``up``, and the process start time that the
#: gateway and the workers both export (prometheus_client's ProcessCollector: checked below).
NOT_HOOKSTREAMS = {"up", "process_start_time_seconds"}


def test_the_process_metrics_rules_read_are_exported_by_both_processes() -> None:
    for metrics in (GatewayMetrics(), WorkerMetrics()):
        samples = {sample.name: sample.value for family in metrics.registry.collect() for sample in family.samples}
        assert samples.get("process_start_time_seconds", 0) > 0, type(metrics).__name__


def test_rules_use_only_contract_metrics() -> None:
    for rule in _rules():
        expr = rule["expr"]
        assert contract_violations(expr) == [], rule["alert"]
        names = metric_names(expr)
        other = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{", expr)) - names
        assert other <= NOT_HOOKSTREAMS, (rule["alert"], other)
        assert names or other, f"{rule['alert']} reads no metric"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_annotations_with_values(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    text = annotations["summary"] + annotations["description"]
    if not rule["expr"].lstrip().startswith("absent("):  # absent() has no value or labels worth showing
        assert "$value" in text or "$labels" in text, "annotations should say which and how much"
