"""The Helm chart (helm/hookstream) and the image (Dockerfile), checked offline: no cluster, no Docker engine.

Renders the chart with the real ``helm`` (v4, installed into .tools/ by ``ops/setup/chart-tools.sh``; ``HELM``
overrides it) for three sets of values (defaults, tests/chart/production.yaml, tests/chart/minimal.yaml),
lints it, validates every manifest against the Kubernetes 1.31 JSON schemas (kubernetes-validate, strict:
unknown fields fail) and checks what DESIGN.md promises of it.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - a clear message instead of a bare collection error
    raise ImportError(
        f"tests/test_chart.py needs {exc.name}: install the test extras or run ops/setup/chart-tools.sh"
    ) from exc

from gateway.metrics import GatewayMetrics
from gateway.server import server_config
from ops.settings import Settings
from streams.actors import CANCEL_PATIENCE

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "hookstream"
VALUES_DIR = Path(__file__).resolve().parent / "chart"
KUBERNETES_VERSION = "1.31"
RELEASE = "hs"
NAMESPACE = "payments"
FULLNAME = f"{RELEASE}-hookstream"
GATEWAY = f"{FULLNAME}-gateway"
WORKER = f"{FULLNAME}-worker"
HEADLESS = f"{FULLNAME}-worker-headless"
SCENARIOS = ["default", "production", "minimal"]
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yaml"
DASHBOARDS = ROOT / "ops" / "grafana"
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}


# ---------------------------------------------------------------------------------------------------------------
# helm


def _helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), str(ROOT / ".tools" / "bin" / "helm"), shutil.which("helm")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no helm binary: run ops/setup/chart-tools.sh (installs helm v4 into .tools/), or set HELM")


@functools.cache
def _helm_env() -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="hookstream-helm-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    env = dict(os.environ)
    # Never a real cluster, never the user's helm configuration.
    env.update(
        KUBECONFIG=os.devnull,
        HELM_CONFIG_HOME=f"{home}/config",
        HELM_CACHE_HOME=f"{home}/cache",
        HELM_DATA_HOME=f"{home}/data",
    )
    return env


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_helm_binary(), *args], capture_output=True, text=True, timeout=60, env=_helm_env(), check=False
    )


def _values_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(VALUES_DIR / f"{scenario}.yaml")]


@functools.cache
def _render(scenario: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_values_args(scenario), *extra)
    assert result.returncode == 0, f"helm template ({scenario} {extra}) failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(scenario: str, *extra: str) -> list[dict[str, Any]]:
    return list(_render(scenario, tuple(extra)))


def values(scenario: str) -> dict[str, Any]:
    """The scenario's merged values (chart defaults overlaid with its file)."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    if scenario != "default":
        _merge(merged, yaml.safe_load((VALUES_DIR / f"{scenario}.yaml").read_text()))
    return merged


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in find(docs, kind)]}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {"gateway": one(docs, "Deployment", GATEWAY), "worker": one(docs, "StatefulSet", WORKER)}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(workload).get("env", [])}


def configmap_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", FULLNAME)["data"]
    return data


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------------------------------
# the chart as a whole


def test_chart_metadata_matches_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project_version = re.search(r'(?m)^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert project_version is not None
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "hookstream"
    assert chart["appVersion"] == project_version.group(1) == "0.1.0"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict(scenario: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *_values_args(scenario))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_are_valid_kubernetes_objects(scenario: str) -> None:
    docs = render(scenario)
    errors = []
    validated = 0
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS:
            continue  # CRDs: no schema in kubernetes-validate; their shape is checked below
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            validated += 1
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(exc.message)
    assert not errors, "\n".join(errors)
    assert validated >= 8, [d["kind"] for d in docs]
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_use_healthz_and_readyz(scenario: str) -> None:
    for component, workload in workloads(render(scenario)).items():
        c = container(workload)
        port_names = {p["name"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", component
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", component
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] in port_names, (component, probe)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_non_root_read_only_and_without_capabilities(scenario: str) -> None:
    for component, workload in workloads(render(scenario)).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["runAsUser"] != 0, component
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, component
        assert pod["automountServiceAccountToken"] is False, component
        sc = container(workload)["securityContext"]
        assert sc["runAsNonRoot"] is True, component
        assert sc["readOnlyRootFilesystem"] is True, component
        assert sc["allowPrivilegeEscalation"] is False, component
        assert sc["capabilities"]["drop"] == ["ALL"], component
        assert "add" not in sc["capabilities"], component
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, component
        mounts = {m["mountPath"]: m["name"] for m in container(workload)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], component


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_worker_state_goes_to_a_writable_volume(scenario: str) -> None:
    docs = render(scenario)
    worker = one(docs, "StatefulSet", WORKER)
    store = values(scenario)["worker"]["stateStore"]
    env = env_of(worker)
    assert env["STATE_STORE"]["value"] == store
    data_dir = env["WORKER_DATA_DIR"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container(worker)["volumeMounts"]}
    assert data_dir in mounts, "Faust's data dir must be a mounted volume (the root file system is read-only)"
    volume = mounts[data_dir]
    claims = [t["metadata"]["name"] for t in worker["spec"].get("volumeClaimTemplates", [])]
    pod_volumes = {v["name"]: v for v in worker["spec"]["template"]["spec"]["volumes"]}
    if store.startswith("rocksdb:"):
        assert claims == [volume] and volume not in pod_volumes
    else:
        assert claims == [] and "emptyDir" in pod_volumes[volume]


def test_default_state_store_is_rocksdb() -> None:
    assert values("default")["worker"]["stateStore"] == "rocksdb://"
    assert env_of(one(render("default"), "StatefulSet", WORKER))["STATE_STORE"]["value"] == "rocksdb://"
    assert env_of(one(render("minimal"), "StatefulSet", WORKER))["STATE_STORE"]["value"] == "memory://"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_selectors_match_pod_labels(scenario: str) -> None:
    docs = render(scenario)
    pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(docs).items()}
    for component, workload in workloads(docs).items():
        assert selects(workload["spec"]["selector"]["matchLabels"], pods[component]), component
    for service in find(docs, "Service"):
        matched = [c for c, labels in pods.items() if selects(service["spec"]["selector"], labels)]
        assert len(matched) == 1, (service["metadata"]["name"], matched)
    for pdb in find(docs, "PodDisruptionBudget"):
        matched = [c for c, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert len(matched) == 1, (pdb["metadata"]["name"], matched)
    for policy in find(docs, "NetworkPolicy"):
        matched = [c for c, labels in pods.items() if selects(policy["spec"]["podSelector"]["matchLabels"], labels)]
        assert len(matched) == 1, (policy["metadata"]["name"], matched)


def test_each_components_pods_spread_over_nodes_unless_told_otherwise() -> None:
    """Two gateways on one node go down together with it: by default each component's pods spread over nodes where
    the cluster allows it (ScheduleAnyway: a one-node cluster still schedules them all)."""
    docs = render("default")
    for component, workload in workloads(docs).items():
        (spread,) = workload["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == ("kubernetes.io/hostname", "ScheduleAnyway")
        pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(docs).items()}
        counted = [name for name, labels in pods.items() if selects(spread["labelSelector"]["matchLabels"], labels)]
        assert counted == [component]  # its own pods, not the other component's
    own = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
    told = workloads(
        render(
            "default",
            *(f"--set=gateway.topologySpreadConstraints[0].{k}={v}" for k, v in own.items()),
            "--set=worker.spreadOverNodes=false",
        )
    )
    gateway, worker = (told[name]["spec"]["template"]["spec"] for name in ("gateway", "worker"))
    assert gateway["topologySpreadConstraints"] == [own]
    assert "topologySpreadConstraints" not in worker


def test_unready_pods_never_hold_a_node_drain() -> None:
    """In a Kafka outage every gateway is unready; with the default eviction policy their budget is never met and
    no drain goes through until Kafka is back. The field is on by default from Kubernetes 1.27 (alpha, off, in
    1.26, where the API server would drop it): not rendered before."""
    for kube, policy in (("1.29.0", "AlwaysAllow"), ("1.27.0", "AlwaysAllow"), ("1.26.5", None), ("1.25.0", None)):
        budgets = find(render("production", "--kube-version", kube), "PodDisruptionBudget")
        assert len(budgets) == 2
        assert [b["spec"].get("unhealthyPodEvictionPolicy") for b in budgets] == [policy, policy], kube


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services_target_the_components_ports(scenario: str) -> None:
    docs = render(scenario)
    config = configmap_env(docs)
    expected_port = {"gateway": int(config["GATEWAY_PORT"]), "worker": int(config["WORKER_WEB_PORT"])}
    services = {GATEWAY: "gateway", WORKER: "worker", HEADLESS: "worker"}
    for name, component in services.items():
        service = one(docs, "Service", name)
        workload = workloads(docs)[component]
        assert selects(service["spec"]["selector"], workload["spec"]["template"]["metadata"]["labels"]), name
        ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
        (port,) = service["spec"]["ports"]
        target = port["targetPort"]
        assert (ports[target] if isinstance(target, str) else target) == expected_port[component], name


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_workers_have_stable_names_in_a_headless_service(scenario: str) -> None:
    docs = render(scenario)
    worker = one(docs, "StatefulSet", WORKER)
    headless = one(docs, "Service", HEADLESS)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert worker["spec"]["serviceName"] == HEADLESS
    assert worker["spec"]["replicas"] == values(scenario)["worker"]["replicaCount"]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    env = container(worker)["env"]
    names = [e["name"] for e in env]
    web_host = env[names.index("WORKER_WEB_HOST")]["value"]
    assert web_host == f"$(POD_NAME).{HEADLESS}.$(POD_NAMESPACE).svc.cluster.local"
    # $(VAR) is expanded only from variables defined earlier in the list
    for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        assert names.index(var) < names.index("WORKER_WEB_HOST")
        assert env[names.index(var)]["valueFrom"]["fieldRef"]["fieldPath"] == field


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_variable_the_chart_sets_is_one_hookstream_reads(scenario: str) -> None:
    settings = (ROOT / "ops" / "settings.py").read_text()
    docs = render(scenario)
    names = set(configmap_env(docs))
    for workload in workloads(docs).values():
        names |= set(env_of(workload)) - {"POD_NAME", "POD_NAMESPACE"}
    assert "WORKER_DATA_DIR" in names and "STRIPE_WEBHOOK_SECRETS_FILE" in names
    # NAME_FILE is read for every NAME the settings read (ops/settings.py, _Env.optional)
    unknown = sorted(n for n in names if f'"{n.removesuffix("_FILE")}"' not in settings)
    assert not unknown, f"set by the chart, read nowhere in ops/settings.py: {unknown}"


def test_partitions_reach_gateway_and_workers_alike() -> None:
    # The gateway creates the topics, the workers refuse topics with another partition count: one value for both.
    docs = render("production")
    assert configmap_env(docs)["TOPIC_PARTITIONS"] == "12"
    for component, workload in workloads(docs).items():
        refs = [e["configMapRef"]["name"] for e in container(workload)["envFrom"]]
        assert refs == [FULLNAME], component
        assert "TOPIC_PARTITIONS" not in env_of(workload), component


@pytest.mark.parametrize(("scenario", "replicas", "in_sync"), [("default", 3, 2), ("minimal", 1, 1)])
def test_the_chart_asks_for_two_replicas_in_sync_where_there_are_three(
    scenario: str, replicas: int, in_sync: int
) -> None:
    """A 200 means the brokers acknowledged the event (acks=all): with Kafka's default min.insync.replicas of 1,
    that is the leader alone, and the event does not survive its loss."""
    settings = Settings.from_env(configmap_env(render(scenario)))
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (replicas, in_sync)


def test_gateway_limits_are_set_from_values_and_default_to_the_gateways_own() -> None:
    defaults = Settings.from_env({})
    config = configmap_env(render("default"))
    chart_defaults = Settings.from_env(config)
    for field in ("gateway_max_body_bytes", "gateway_publish_timeout", "gateway_client_timeout"):
        assert getattr(chart_defaults, field) > 0, field
    assert chart_defaults.gateway_client_timeout == defaults.gateway_client_timeout
    assert chart_defaults.gateway_max_header_bytes == defaults.gateway_max_header_bytes
    assert chart_defaults.gateway_keepalive_timeout == defaults.gateway_keepalive_timeout
    chosen_values = ("--set", "gateway.clientTimeout=4", "--set", "gateway.maxHeaderBytes=16384")
    chosen_values += ("--set", "gateway.keepaliveTimeout=620", "--set", "gateway.bind=::")
    config = configmap_env(render("default", *chosen_values))
    chosen = Settings.from_env(config)
    assert (chosen.gateway_client_timeout, chosen.gateway_max_header_bytes) == (4.0, 16384)
    assert (chosen.gateway_keepalive_timeout, chosen.gateway_host) == (620, "::")  # an IPv6 cluster's
    assert chart_defaults.gateway_host == defaults.gateway_host


def test_numbers_from_a_values_file_reach_the_pods_as_numbers_the_settings_read(tmp_path: Path) -> None:
    """Helm reads every number of a values file as a float, and prints 2097152 as "2.097152e+06": the settings
    refuse that, and the pods crash-looped. Whole numbers go out as digits, fractions as written."""
    values_file = tmp_path / "numbers.yaml"
    values_file.write_text(
        "config:\n  extra:\n    WORKER_PRODUCER_MAX_BATCH_SIZE: 2097152\n    HANDLER_RETRY_BACKOFF: 0.5\n"
        "    FAR_TOO_BIG: 1e21\n"  # an int64 would wrap: left as printed
        "gateway:\n  env:\n    PRODUCER_MAX_BATCH_SIZE: 4194304\n"
        "worker:\n  maxInflight: 2000000\n  env:\n    LOG_LEVEL: DEBUG\n"  # a ConfigMap variable, overridden
    )
    docs = render("default", "-f", str(values_file))
    gateway, worker = (env_of(workloads(docs)[name]) for name in ("gateway", "worker"))
    config = configmap_env(docs)
    assert config["WORKER_PRODUCER_MAX_BATCH_SIZE"] == "2097152" and config["HANDLER_RETRY_BACKOFF"] == "0.5"
    assert gateway["PRODUCER_MAX_BATCH_SIZE"]["value"] == "4194304"
    assert worker["WORKER_MAX_INFLIGHT"]["value"] == "2000000" and config["FAR_TOO_BIG"] == "1e+21"
    assert worker["LOG_LEVEL"]["value"] == "DEBUG" and "LOG_LEVEL" not in gateway
    settings = Settings.from_env({**config, **{name: v["value"] for name, v in worker.items() if "value" in v}})
    assert (settings.worker_producer_max_batch_size, settings.worker_max_inflight) == (2_097_152, 2_000_000)


# ---------------------------------------------------------------------------------------------------------------
# secrets and Kafka


def _secret_file(workload: dict[str, Any], variable: str) -> tuple[str, str]:
    """The (Secret, key) that ``variable`` is read from: a file named by ``variable``_FILE in a read-only Secret
    volume, readable by the pod's user and no one else, never the value in the environment."""
    env = env_of(workload)
    assert variable not in env, f"{variable} is in the environment; it must come from {variable}_FILE"
    path = env[f"{variable}_FILE"]["value"]
    (mount,) = [m for m in container(workload)["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert mount["readOnly"] is True, mount
    assert "subPath" not in mount, "a subPath mount never sees a rotated Secret"
    relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    pod = workload["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    if "secret" in volume:
        mode, sources = (
            volume["secret"].get("defaultMode", 0o644),
            [volume["secret"] | {"name": volume["secret"]["secretName"]}],
        )
    else:
        mode, sources = (
            volume["projected"].get("defaultMode", 0o644),
            [s["secret"] for s in volume["projected"]["sources"]],
        )
    # Secret files belong to root; uid 10001 reads them through the group the kubelet gives them, the fsGroup.
    assert mode & 0o077 == 0o040, f"{oct(mode)}: group-readable only (owner root, group fsGroup)"
    assert pod["securityContext"].get("fsGroup"), "group-readable secret files need the pod's fsGroup"
    found = [(s["name"], item["key"]) for s in sources for item in s.get("items", []) if item["path"] == relative]
    assert len(found) == 1, (path, sources)
    return found[0]


def _secret_files(workload: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        name.removesuffix("_FILE"): _secret_file(workload, name.removesuffix("_FILE"))
        for name in env_of(workload)
        if name in ("STRIPE_WEBHOOK_SECRETS_FILE", "KAFKA_SASL_PASSWORD_FILE")
    }


SASL_ON = (
    "--set",
    "kafka.securityProtocol=SASL_SSL",
    "--set",
    "kafka.sasl.username=u",
    "--set",
    "kafka.sasl.existingSecret=kafka-user",
    "--set",
    "kafka.sasl.passwordKey=pw",
)
STRIPE_EXISTING = ("--set", "stripe.existingSecret=signing")


@pytest.mark.parametrize(
    ("scenario", "extra", "stripe", "sasl"),
    [
        ("default", (), (f"{FULLNAME}-stripe", "webhook-secrets"), None),
        ("default", SASL_ON, (f"{FULLNAME}-stripe", "webhook-secrets"), ("kafka-user", "pw")),
        ("default", SASL_ON + STRIPE_EXISTING, ("signing", "webhook-secrets"), ("kafka-user", "pw")),
        ("minimal", (), (f"{FULLNAME}-stripe", "webhook-secrets"), None),
        ("production", (), ("hookstream-stripe-signing", "webhook-secrets"), ("hookstream", "password")),
    ],
    ids=["default", "sasl", "sasl-existing-stripe", "minimal", "production"],
)
def test_secrets_reach_the_pods_as_read_only_files_not_environment(
    scenario: str, extra: tuple[str, ...], stripe: tuple[str, str], sasl: tuple[str, str] | None
) -> None:
    """Environment variables end up in /proc/<pid>/environ, crash dumps and child processes: the signing secrets
    and the SASL password are mounted files named by NAME_FILE (ops/settings.py), for gateway and worker alike."""
    docs = render(scenario, *extra)
    for component, workload in workloads(docs).items():
        c = container(workload)
        refs = [e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
        assert not refs, f"{component}: secrets as environment variables: {refs}"
        assert not [e for e in c.get("envFrom", []) if "secretRef" in e], component
        expected = {} if sasl is None else {"KAFKA_SASL_PASSWORD": sasl}
        if component == "gateway":
            expected["STRIPE_WEBHOOK_SECRETS"] = stripe
        assert _secret_files(workload) == expected, component
        for name in ("STRIPE_WEBHOOK_SECRETS", "KAFKA_SASL_PASSWORD"):
            assert name not in env_of(workload), (component, name)


def test_production_secret_references_match_values() -> None:
    docs = render("production")
    v = values("production")
    gateway, worker = workloads(docs).values()
    assert _secret_file(gateway, "STRIPE_WEBHOOK_SECRETS") == (v["stripe"]["existingSecret"], "webhook-secrets")
    assert "STRIPE_WEBHOOK_SECRETS_FILE" not in env_of(worker), "workers have no use for the signing secrets"
    assert not find(docs, "Secret"), "with existingSecret the chart creates no Secret"
    config = configmap_env(docs)
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == v["kafka"]["bootstrapServers"]
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["KAFKA_SASL_MECHANISM"] == v["kafka"]["sasl"]["mechanism"] == "SCRAM-SHA-512"
    assert config["KAFKA_SASL_USERNAME"] == v["kafka"]["sasl"]["username"]
    for workload in (gateway, worker):
        assert _secret_file(workload, "KAFKA_SASL_PASSWORD") == (v["kafka"]["sasl"]["existingSecret"], "password")
        ca_file = env_of(workload)["KAFKA_SSL_CAFILE"]["value"]
        mounts = {m["name"]: m for m in container(workload)["volumeMounts"]}
        volumes = {vol["name"]: vol for vol in workload["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [m for m in mounts.values() if ca_file.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == v["kafka"]["tls"]["caSecret"]
        assert secret["items"] == [{"key": "ca.crt", "path": ca_file.rsplit("/", 1)[1]}]
    # no secret value anywhere in the ConfigMap
    assert not any("whsec_" in value for value in config.values())


def test_a_client_certificate_reaches_both_components_as_read_only_files() -> None:
    """Mutual TLS (a Strimzi KafkaUser with tls authentication): its Secret's certificate and key are mounted, and
    named by KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE (tests/test_kafka_tls.py: what the clients do with them)."""
    docs = render("default", "--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.clientSecret=kafka-user")
    for component, workload in workloads(docs).items():
        env = env_of(workload)
        files = {name: env[name]["value"] for name in ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")}
        mounts = container(workload)["volumeMounts"]
        volumes = {vol["name"]: vol for vol in workload["spec"]["template"]["spec"]["volumes"]}
        for name, path in files.items():
            directory, file = path.rsplit("/", 1)
            (mount,) = [m for m in mounts if m["mountPath"].rstrip("/") == directory]
            assert mount["readOnly"] is True, (component, name)
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "kafka-user" and secret["defaultMode"] == 0o440, (component, name)
            assert {"key": file, "path": file} in secret["items"], (component, name)
        assert sorted(path.rsplit("/", 1)[1] for path in files.values()) == ["user.crt", "user.key"], component


def test_an_encrypted_client_keys_password_is_a_file_beside_the_key() -> None:
    """kafka.tls.keyPasswordKey names the password's key in the client Secret: mounted with the certificate and key,
    named by KAFKA_SSL_KEY_PASSWORD_FILE (tests/test_kafka_tls.py: the clients read an encrypted key with it)."""
    tls = ("--set", "kafka.securityProtocol=SSL", "--set", "kafka.tls.clientSecret=kafka-user")
    docs = render("default", *tls, "--set", "kafka.tls.keyPasswordKey=user.password")
    for component, workload in workloads(docs).items():
        env = env_of(workload)
        path = env["KAFKA_SSL_KEY_PASSWORD_FILE"]["value"]
        assert path.rsplit("/", 1)[0] == env["KAFKA_SSL_KEYFILE"]["value"].rsplit("/", 1)[0], component
        volumes = {vol["name"]: vol for vol in workload["spec"]["template"]["spec"]["volumes"]}
        (mount,) = [
            m for m in container(workload)["volumeMounts"] if m["mountPath"].rstrip("/") == path.rsplit("/", 1)[0]
        ]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "kafka-user", component
        assert {"key": "user.password", "path": path.rsplit("/", 1)[1]} in secret["items"], component
        assert "KAFKA_SSL_KEY_PASSWORD" not in env, component  # never the value itself
    for component, workload in workloads(render("default", *tls)).items():
        assert "KAFKA_SSL_KEY_PASSWORD_FILE" not in env_of(workload), component


def test_minimal_values_make_the_signing_secret_and_use_no_kafka_credentials() -> None:
    docs = render("minimal")
    gateway, worker = workloads(docs).values()
    name, key = _secret_file(gateway, "STRIPE_WEBHOOK_SECRETS")
    secret = one(docs, "Secret", name)
    assert secret["stringData"] == {key: values("minimal")["stripe"]["webhookSecrets"]}
    for workload in (gateway, worker):
        assert "KAFKA_SASL_PASSWORD" not in env_of(workload)
        assert "KAFKA_SASL_PASSWORD_FILE" not in env_of(workload)
        assert not {"KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"} & set(env_of(workload))
    config = configmap_env(docs)
    assert config["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert "KAFKA_SASL_USERNAME" not in config
    assert gateway["spec"]["replicas"] == 1 and worker["spec"]["replicas"] == 1
    assert not find(docs, "PodDisruptionBudget") and not find(docs, "Ingress")
    assert not find(docs, "HorizontalPodAutoscaler") and not find(docs, "NetworkPolicy")


def test_default_values_expect_a_secret_the_user_creates() -> None:
    docs = render("default")
    assert _secret_file(workloads(docs)["gateway"], "STRIPE_WEBHOOK_SECRETS") == (
        f"{FULLNAME}-stripe",
        "webhook-secrets",
    )
    assert not find(docs, "Secret"), "the chart must not invent a signing secret"


def test_a_chart_made_signing_secret_rolls_the_gateways_when_it_changes() -> None:
    """The gateway reads the mounted file at start only: a changed Secret needs new pods (checksum annotation)."""

    def checksum(secret: str) -> str:
        gateway = one(render("minimal", "--set", f"stripe.webhookSecrets={secret}"), "Deployment", GATEWAY)
        annotation: str = gateway["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
        return annotation

    assert checksum("whsec_one") != checksum("whsec_two")


# ---------------------------------------------------------------------------------------------------------------
# grace periods


def _grace_needs(docs: list[dict[str, Any]]) -> dict[str, float]:
    """Each component's longest stop, computed from what the pods are given, as the code reads it."""
    config = configmap_env(docs)
    needs = {}
    for component, workload in workloads(docs).items():
        env = env_of(workload)
        plain = {n: e["value"] for n, e in env.items() if "value" in e and "$(" not in e["value"]}
        # secret files are not rendered: a placeholder each (one a signing secret would pass for)
        secrets = {n.removesuffix("_FILE"): "whsec_mounted" for n in plain if n.endswith("_FILE")}
        plain = {n: v for n, v in plain.items() if not n.endswith("_FILE")}
        settings = Settings.from_env({**config, **plain, **secrets})
        if component == "gateway":
            pre_stop = container(workload).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            sleep = float(pre_stop[1]) if pre_stop else 0.0
            drain = server_config(lambda: None, settings, GatewayMetrics()).timeout_graceful_shutdown
            # preStop, uvicorn's graceful shutdown (gateway/server.py), the producer's close (gateway/publisher.py)
            needs[component] = sleep + drain + settings.gateway_publish_timeout
        else:
            needs[component] = settings.handler_timeout + CANCEL_PATIENCE
    return needs


@pytest.mark.parametrize(
    ("scenario", "extra"),
    [
        ("default", ()),
        ("production", ()),
        ("minimal", ()),
        (
            "default",
            ("--set-string", "worker.env.HANDLER_TIMEOUT=100", "--set", "worker.terminationGracePeriodSeconds=120"),
        ),
        ("default", ("--set-json", "gateway.publishTimeout=2.5", "--set", "gateway.terminationGracePeriodSeconds=29")),
        ("default", ("--set-json", "gateway.clientTimeout=30", "--set", "gateway.terminationGracePeriodSeconds=63")),
    ],
)
def test_grace_periods_cover_the_stops_they_bound(scenario: str, extra: tuple[str, ...]) -> None:
    docs = render(scenario, *extra)
    for component, need in _grace_needs(docs).items():
        grace = workloads(docs)[component]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > need, f"{component}: grace period {grace} s, its stop may take {need} s"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (
            ["--set", "gateway.terminationGracePeriodSeconds=35"],
            ["gateway.terminationGracePeriodSeconds", "gateway.publishTimeout", "at least 42"],
        ),
        (
            ["--set", "gateway.publishTimeout=20"],
            ["gateway.terminationGracePeriodSeconds", "gateway.publishTimeout", "at least 62"],
        ),
        (
            ["--set-string", "gateway.env.GATEWAY_CLIENT_TIMEOUT=30"],
            ["gateway.terminationGracePeriodSeconds", "gateway.env.GATEWAY_CLIENT_TIMEOUT", "at least 62"],
        ),
        (
            ["--set-string", "gateway.env.GATEWAY_PUBLISH_TIMEOUT=20"],
            ["gateway.terminationGracePeriodSeconds", "gateway.env.GATEWAY_PUBLISH_TIMEOUT"],
        ),
        (
            ["--set-json", "gateway.publishTimeout=2.5", "--set", "gateway.terminationGracePeriodSeconds=27"],
            ["at least 28"],
        ),
        (
            ["--set", "gateway.preStopSleepSeconds=15"],
            ["gateway.terminationGracePeriodSeconds", "gateway.preStopSleepSeconds (15)"],
        ),
        (
            ["--set", "worker.terminationGracePeriodSeconds=45"],
            ["worker.terminationGracePeriodSeconds", "HANDLER_TIMEOUT", "at least 50"],
        ),
        (
            ["--set-string", "worker.env.HANDLER_TIMEOUT=50"],
            ["worker.terminationGracePeriodSeconds", "worker.env.HANDLER_TIMEOUT", "at least 70"],
        ),
        (
            ["--set-string", "config.extra.HANDLER_TIMEOUT=40.5"],
            ["worker.terminationGracePeriodSeconds", "config.extra.HANDLER_TIMEOUT", "at least 61"],
        ),
    ],
)
def test_grace_periods_shorter_than_the_timeouts_need_are_refused(args: list[str], names: list[str]) -> None:
    result = helm("template", RELEASE, str(CHART), *args)
    assert result.returncode != 0, f"{args} was accepted"
    for name in names:
        assert name in result.stderr, (name, result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "stripe.existingSecret=a", "--set", "stripe.webhookSecrets=whsec_x"], "not both"),
        (["--set-string", "config.extra.GATEWAY_PUBLISH_TIMEOUT=20"], "GATEWAY_PUBLISH_TIMEOUT: the chart sets"),
        # the per-component env maps may override the ConfigMap, not the pods' own variables nor the ports (the
        # worker would listen where no probe, Service or peer looks)
        (["--set", "worker.env.WORKER_WEB_PORT=7000"], "worker.env.WORKER_WEB_PORT: the chart sets"),
        (["--set", "worker.env.WORKER_DATA_DIR=/tmp"], "worker.env.WORKER_DATA_DIR: the chart sets"),
        (["--set", "gateway.env.STRIPE_WEBHOOK_SECRETS=whsec_x"], "gateway.env.STRIPE_WEBHOOK_SECRETS: a secret"),
        (["--set", "config.extra.KAFKA_SSL_KEY_PASSWORD=x"], "config.extra.KAFKA_SSL_KEY_PASSWORD: a secret, which"),
        (["--set", "worker.env.KAFKA_SASL_PASSWORD_FILE=/x"], "kafka.sasl.existingSecret and kafka.tls.keyPasswordKey"),
        (["--set-string", "config.extra.WORKER_DATA_DIR=/tmp"], "WORKER_DATA_DIR: the chart sets"),
        (["--set", "config.topicReplicationFactor=1"], "config.topicMinInsyncReplicas (2) is above"),
        (["--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.sasl.username=u"], "kafka.sasl.existingSecret"),
        (["--set", "kafka.securityProtocol=SASL_PLAINTEXT", "--set", "kafka.sasl.existingSecret=s"], "username"),
        (["--set", "kafka.tls.clientSecret=kafka-user"], "needs kafka.securityProtocol SSL or SASL_SSL, not PLAINTEXT"),
        (["--set", "kafka.tls.keyPasswordKey=user.password"], "kafka.tls.keyPasswordKey (the password of the client"),
        # NetworkPolicies that admit no Prometheus while a ServiceMonitor asks it to scrape: silent missing metrics
        (
            [
                *("--set", "networkPolicy.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"),
                *("--api-versions", "monitoring.coreos.com/v1"),
            ],
            "metricsFrom",
        ),
    ],
)
def test_inconsistent_values_are_refused_with_a_reason(args: list[str], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), *args)
    assert result.returncode != 0
    assert message in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# gateway exposure


def test_production_ingress_tls_and_autoscaling() -> None:
    docs = render("production")
    v = values("production")["gateway"]
    ingress = one(docs, "Ingress", GATEWAY)
    assert ingress["spec"]["tls"] == [
        {"hosts": [v["ingress"]["host"]], "secretName": v["ingress"]["tls"]["secretName"]}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == v["ingress"]["host"]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/webhooks/stripe", "only the webhook is public, not /metrics"
    assert path["backend"]["service"] == {"name": GATEWAY, "port": {"name": "http"}}
    hpa = one(docs, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert "replicas" not in one(docs, "Deployment", GATEWAY)["spec"], "the HPA owns the replica count"


def test_default_gateway_has_fixed_replicas_and_no_ingress() -> None:
    docs = render("default")
    assert one(docs, "Deployment", GATEWAY)["spec"]["replicas"] == values("default")["gateway"]["replicaCount"]
    assert not find(docs, "Ingress") and not find(docs, "HorizontalPodAutoscaler")


def test_network_policies_let_webhooks_prometheus_and_peer_workers_in() -> None:
    docs = render("production")
    v = values("production")["networkPolicy"]
    pods = {name: w["spec"]["template"]["metadata"]["labels"] for name, w in workloads(docs).items()}
    gateway, worker = one(docs, "NetworkPolicy", GATEWAY), one(docs, "NetworkPolicy", WORKER)
    (gateway_rule,) = gateway["spec"]["ingress"]
    assert gateway_rule["from"] == v["gatewayFrom"] + v["metricsFrom"]
    assert gateway_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    (worker_rule,) = worker["spec"]["ingress"]
    peers = worker_rule["from"]
    assert any("podSelector" in p and selects(p["podSelector"]["matchLabels"], pods["worker"]) for p in peers)
    assert all(p in peers for p in v["metricsFrom"])
    # Without gatewayFrom the webhook port is open to any source (Stripe arrives through the ingress controller).
    open_gateway = one(render("default", "--set", "networkPolicy.enabled=true"), "NetworkPolicy", GATEWAY)
    assert "from" not in open_gateway["spec"]["ingress"][0]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_worker_web_server_listens_where_probes_scrapes_and_peers_reach_it(scenario: str) -> None:
    """WORKER_WEB_BIND (the listening address) is set explicitly: every pod interface, because the kubelet's
    probes, Prometheus and peer workers come in on the pod IP and `kubectl port-forward` on localhost; the
    NetworkPolicy decides who may connect. WORKER_WEB_HOST stays the name peers use."""
    workload = one(render(scenario), "StatefulSet", WORKER)
    env = env_of(workload)
    assert env["WORKER_WEB_BIND"]["value"] == values(scenario)["worker"]["webBind"] == "0.0.0.0"
    assert env["WORKER_WEB_HOST"]["value"].startswith("$(POD_NAME).")
    assert "WORKER_WEB_BIND" not in configmap_env(render(scenario))
    bound = one(render("default", "--set", "worker.webBind=10.1.2.3"), "StatefulSet", WORKER)
    assert env_of(bound)["WORKER_WEB_BIND"]["value"] == "10.1.2.3"


def test_network_policies_are_an_option_off_by_default() -> None:
    assert not find(render("default"), "NetworkPolicy")
    docs = render("default", "--set", "networkPolicy.enabled=true")
    policies = find(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["name"] for p in policies) == sorted([GATEWAY, WORKER])
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    (worker_rule,) = one(docs, "NetworkPolicy", WORKER)["spec"]["ingress"]
    assert worker_rule["from"], "the workers' /objects and /metrics must not be open to every pod"


# ---------------------------------------------------------------------------------------------------------------
# monitoring


@pytest.mark.parametrize("scenario", ["default", "minimal"])
def test_monitoring_objects_absent_by_default(scenario: str) -> None:
    docs = render(scenario)
    assert not [d for d in docs if d["kind"] in MONITORING_KINDS]
    assert not [d for d in find(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"].get("labels", {})]


def test_monitoring_needs_the_operator_api_or_force() -> None:
    enabled = ("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true")
    assert not [d for d in render("default", *enabled) if d["kind"] in MONITORING_KINDS]
    with_api = render("default", *enabled, "--api-versions", "monitoring.coreos.com/v1")
    assert {d["kind"] for d in with_api if d["kind"] in MONITORING_KINDS} == MONITORING_KINDS
    api_without_enabled = render("default", "--api-versions", "monitoring.coreos.com/v1")
    assert not [d for d in api_without_enabled if d["kind"] in MONITORING_KINDS]
    for kind, key in (("ServiceMonitor", "serviceMonitor"), ("PrometheusRule", "prometheusRule")):
        forced = render("default", "--set", f"metrics.{key}.enabled=true", "--set", f"metrics.{key}.force=true")
        assert [d["kind"] for d in forced if d["kind"] in MONITORING_KINDS] == [kind]
        assert not [d for d in render("default", "--set", f"metrics.{key}.force=true") if d["kind"] == kind]


def test_network_policies_without_metrics_from_render_where_no_service_monitor_does() -> None:
    """Without the Operator's API no ServiceMonitor is rendered, so no Prometheus is told to scrape: values that
    enable one for the clusters that have it must not fail on those that do not (the refusal is above)."""
    args = ("--set", "networkPolicy.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")
    docs = render("default", *args)
    assert len(find(docs, "NetworkPolicy")) == 2 and not find(docs, "ServiceMonitor")


def test_service_monitor_scrapes_both_components() -> None:
    docs = render("production")
    monitor = one(docs, "ServiceMonitor", FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    scraped = [
        s for s in find(docs, "Service") if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["name"] for s in scraped) == [GATEWAY, WORKER]
    for service in scraped:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        # ops/prometheus/alerts.yaml finds targets by job: it must name hookstream and the component
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert "hookstream" in job and component in job, job


def test_job_names_keep_hookstream_whatever_the_release_is_called() -> None:
    docs = render("production", "--set", "fullnameOverride=payments-ingest")
    jobs = sorted(s["metadata"]["labels"].get("hookstream.io/job", "") for s in find(docs, "Service"))
    assert [j for j in jobs if j] == ["hookstream-payments-ingest-gateway", "hookstream-payments-ingest-worker"]


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: the chart ships a copy of it (make chart)")
    return path


def test_prometheus_rule_holds_the_ops_alert_groups() -> None:
    groups = yaml.safe_load(_require(ALERTS).read_text())["groups"]
    rule = one(render("production"), "PrometheusRule", FULLNAME)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == groups
    assert groups, "no alert groups"


def test_dashboard_configmap_is_labelled_for_grafana() -> None:
    dashboards = sorted(_require(DASHBOARDS).glob("*.json"))
    assert dashboards, "ops/grafana holds no dashboard"
    _require(DASHBOARDS / "hookstream.json")
    docs = render("production")
    configmap = one(docs, "ConfigMap", f"{FULLNAME}-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Payments"}
    assert sorted(configmap["data"]) == [p.name for p in dashboards]
    for path in dashboards:
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_chart_copies_equal_the_ops_originals() -> None:
    """Helm reads only files inside the chart: files/ holds copies, refreshed by `make chart`."""
    hint = "helm/hookstream/files/ is out of date: run `make chart`"
    assert (CHART / "files" / "alerts.yaml").read_bytes() == _require(ALERTS).read_bytes(), hint
    originals = {p.name: p.read_bytes() for p in _require(DASHBOARDS).glob("*.json")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert sorted(copies) == sorted(originals), hint
    for name, content in originals.items():
        assert copies[name] == content, f"{hint} ({name} differs)"


# ---------------------------------------------------------------------------------------------------------------
# values schema


def test_values_schema_is_draft_07_and_accepts_every_values_file() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    for scenario in SCENARIOS:
        jsonschema.Draft7Validator(schema).validate(values(scenario))
    # every key the checks rely on is declared
    for dotted in (
        "image.repository image.tag gateway.replicaCount gateway.ingress.enabled gateway.autoscaling.enabled "
        "worker.replicaCount kafka.bootstrapServers kafka.securityProtocol kafka.sasl.mechanism kafka.sasl.username "
        "kafka.sasl.existingSecret kafka.tls.caSecret stripe.existingSecret metrics.serviceMonitor.enabled "
        "metrics.prometheusRule.enabled dashboards.enabled networkPolicy.enabled worker.topicPartitions"
    ).split():
        node = schema
        for part in dotted.split("."):
            node = node["properties"][part]
        assert "type" in node, dotted


@pytest.mark.parametrize(
    ("values_file", "field"),
    [("bad-types.yaml", "/gateway/replicaCount"), ("bad-protocol.yaml", "/kafka/securityProtocol")],
)
def test_schema_rejects_bad_values(values_file: str, field: str) -> None:
    result = helm("template", RELEASE, str(CHART), "-f", str(VALUES_DIR / values_file))
    assert result.returncode != 0, f"{values_file} was accepted"
    assert field in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("worker.replicaCount=-1", "/worker/replicaCount"),
        ("kafka.sasl.mechanism=GSSAPI", "/kafka/sasl/mechanism"),
        ("worker.stateStore=redis://", "/worker/stateStore"),
        ("gateway.replicas=3", "replicas"),
        ("worker.webBind=", "/worker/webBind"),
    ],
)
def test_schema_rejects_other_mistakes(setting: str, field: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--set", setting)
    assert result.returncode != 0, f"{setting} was accepted"
    assert field in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------------------------
# NOTES.txt


def _notes(*args: str) -> str:
    result = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_name_the_webhook_url_and_objects_endpoint() -> None:
    production = _notes("-f", str(VALUES_DIR / "production.yaml"))
    assert "https://hooks.payments.example.com/webhooks/stripe" in production
    assert f"port-forward svc/{WORKER}" in production and "/objects/" in production
    default = _notes()
    assert f"port-forward svc/{GATEWAY}" in default
    assert f"create secret generic {FULLNAME}-stripe --from-literal=webhook-secrets=" in default
    crowded = _notes("--set", "worker.replicaCount=10")
    assert "2 worker(s) will get no partition" in crowded


def test_notes_say_that_unlabelled_monitoring_objects_are_ignored_by_kube_prometheus_stack() -> None:
    enabled = ("--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true")
    unlabelled = _notes(*enabled)
    for key in ("serviceMonitor", "prometheusRule"):
        assert f"--set-string metrics.{key}.labels.release=kube-prometheus-stack" in unlabelled, key
    labelled = _notes(*enabled, "-f", str(VALUES_DIR / "production.yaml"))
    assert "labels.release=" not in labelled
    assert "labels.release=" not in _notes()
    readme = (CHART / "README.md").read_text()
    assert "metrics.serviceMonitor.labels.release" in readme and "metrics.prometheusRule.labels.release" in readme


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile (cannot be built here: no Docker engine; what can be read is checked)


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        elif not stages:
            assert instruction == "ARG", f"{instruction} before the first FROM"
            continue
        stages[-1].append((instruction, rest.strip()))
    return stages


def _instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for instruction, rest in stage if instruction == name]


def test_dockerfile_is_multi_stage_with_a_slim_non_root_final_stage() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    builder_runs = " ".join(_instructions(builder, "RUN"))
    assert re.search(r"\bpip install (--constraint \S+ )?\.(\s|$)", builder_runs), "pip install . of the project"
    assert any("--from=builder" in c for c in _instructions(final, "COPY")), "final stage copies the built venv"
    (user,) = _instructions(final, "USER")
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0] == "10001"
    assert json.loads(_instructions(final, "ENTRYPOINT")[-1]) == ["hookstream"]
    assert json.loads(_instructions(final, "CMD")[-1]) == ["gateway"]
    final_runs = " ".join(_instructions(final, "RUN"))
    for tool in ("build-essential", "gcc", "g++", "clang", "make", "apt-get install", "pip install"):
        assert not re.search(rf"(^|\s){re.escape(tool)}(\s|$)", final_runs), f"{tool} in the final stage"
    assert "build-essential" in " ".join(_instructions(builder, "RUN")), "compilers belong in the builder"


def test_the_image_and_the_suite_install_the_locked_versions() -> None:
    """requirements.lock pins every runtime dependency inside pyproject.toml's ranges; the image installs with it,
    and so does make test: this suite's environment holds exactly those versions, so CI tests what ships."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not a pin: {line}"
            pins[canonicalize_name(name)] = version.strip()
    # every runtime dependency, transitive ones and extras' included, as installed here: pinned, inside its range
    wanted = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    walked: set[tuple[str, str]] = set()  # (package, extra) whose requirements were added
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} (needed by a runtime dependency) is not in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {requirement.specifier}"
        for extra in {"", *requirement.extras} - {e for n, e in walked if n == name}:
            walked.add((name, extra))
            for needed in map(Requirement, importlib.metadata.requires(name) or []):
                if needed.marker is None or needed.marker.evaluate({"extra": extra}):
                    if extra == "" or (needed.marker is not None and "extra" in str(needed.marker)):
                        wanted.append(needed)
    assert {n for n, _ in walked} == set(pins), f"pinned, not needed: {set(pins) - {n for n, _ in walked}}"
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, f"{name}: the suite runs {importlib.metadata.version(name)}"
    dockerfile_runs = " ".join(_instructions(_dockerfile_stages()[0], "RUN"))
    assert "--constraint requirements.lock ." in dockerfile_runs
    assert "--constraint $(LOCK)" in (ROOT / "Makefile").read_text()


def test_the_suite_runs_with_the_locked_tools() -> None:
    """requirements-dev.lock pins the tools of the dev extra (pytest, hypothesis, stripe, ...) and what they need
    beyond requirements.lock: a clean clone's make test installs these, not whatever was released since (a new
    major of a test tool could turn CI red with no change here)."""
    import importlib.metadata

    from packaging.utils import canonicalize_name

    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text().splitlines()
        return {canonicalize_name(n): v for n, _, v in (line.partition("==") for line in lines if "==" in line)}

    tools, runtime = pins("requirements-dev.lock"), pins("requirements.lock")
    assert {"pytest", "hypothesis", "stripe", "ruff", "mypy", "testcontainers"} <= set(tools)
    assert not set(tools) & set(runtime), "pinned in both locks"
    for name, version in tools.items():
        assert importlib.metadata.version(name) == version, f"{name}: the suite runs {importlib.metadata.version(name)}"
    assert "--constraint $(LOCK) --constraint $(DEV_LOCK)" in (ROOT / "Makefile").read_text()


def test_image_can_run_the_charts_default_state_store() -> None:
    # Faust's rocksdb:// store needs the rocksdict bindings, which the project's dependencies do not pull in.
    assert values("default")["worker"]["stateStore"].startswith("rocksdb:")
    pyproject = (ROOT / "pyproject.toml").read_text()
    dockerfile_runs = " ".join(_instructions(_dockerfile_stages()[0], "RUN"))
    assert "rocksdict" in pyproject or "rocksdict" in dockerfile_runs


def test_dockerignore_keeps_the_context_small_but_buildable() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    }
    assert {".git", ".venv", ".tools"} <= ignored
    needed = {"pyproject.toml", "README.md", "requirements.lock", "gateway", "streams", "handlers", "ops"}
    assert not needed & ignored
    assert "*" not in ignored
