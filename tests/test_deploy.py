"""Deployment artefacts: the Helm chart (rendered by Helm's own template engine), its RBAC held against the
Kubernetes API calls the code makes, the Dockerfile's rules, and the example configurations."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from responder.config import iter_secret_refs, load_config, parse_duration
from responder.daemon import build_intakes
from responder.metrics import Metrics
from tests.support.kube_rbac import (
    ApiCall,
    Grant,
    Permission,
    UnknownApiCall,
    allows,
    granted,
    required_permissions,
    scan_source,
)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "alert-responder"
PRODUCTION_VALUES = ROOT / "docs" / "examples" / "values-production.yaml"
RELEASE, NAMESPACE = "responder", "ops"
FULLNAME = "responder-alert-responder"
READ_VERBS = {"get", "list", "watch"}

# ---- helpers ------------------------------------------------------------------------------------------


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """The chart rendered by Helm's engine: template path -> manifest text (helm's own splitting)."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return rendered


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs = []
    for name, text in render(values).items():
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def production_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return values


def responder_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RESPONDER_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "responder", *args], capture_output=True, text=True,
                          timeout=60, env=full_env, cwd=ROOT)


def dummy_secrets(config_path: Path) -> dict[str, str]:
    """A dummy value for every {env: NAME} the config refers to, as the pod's secretKeyRefs would give."""
    config = load_config(config_path)
    return {ref.env: f"dummy-{ref.env.lower()}" for _, ref in iter_secret_refs(config) if ref.env}


def code_calls() -> list[ApiCall]:
    """Kubernetes API calls in responder/ and the designed calls in tests/fixtures/kube_calls.py."""
    return scan_source([ROOT / "responder", ROOT / "tests" / "fixtures" / "kube_calls.py"])


def needed(calls: list[ApiCall]) -> set[Permission]:
    return {p for call in calls for p in required_permissions(call)}


def as_triples(items: set[Permission] | set[Grant]) -> set[tuple[str, str, str]]:
    return {(i.group, i.resource, i.verb) for i in items}


# ---- RBAC against the code --------------------------------------------------------------------------


def test_scanner_maps_kubernetes_naming_to_rbac(tmp_path: Path) -> None:
    source = tmp_path / "calls.py"
    source.write_text(
        "from kubernetes_asyncio import client, watch\n"
        "GROUP = 'metrics.k8s.io'\n"
        "async def f(api, ns, name, body):\n"
        "    core = client.CoreV1Api(api)\n"
        "    await core.read_namespaced_pod_log(name, ns)\n"
        "    await client.AppsV1Api(api).patch_namespaced_deployment_scale(name, ns, body)\n"
        "    await client.AppsV1Api(api).replace_namespaced_deployment_scale(name, ns, body)\n"
        "    await core.list_node()\n"
        "    await core.delete_collection_namespaced_pod(ns)\n"
        "    await core.list_namespaced_event(ns)\n"
        "    await client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, 'v1beta1', ns, 'pods')\n"
        "    async for _ in watch.Watch().stream(core.list_namespaced_pod, ns):\n"
        "        pass\n"
    )
    assert needed(scan_source([source])) == {
        Permission("", "pods/log", "get", True),
        Permission("apps", "deployments/scale", "patch", True),
        Permission("apps", "deployments/scale", "update", True),
        Permission("", "nodes", "list", False),
        Permission("", "pods", "deletecollection", True),
        Permission("", "events", "list", True),  # CoreV1Api is named, so not events.k8s.io
        Permission("metrics.k8s.io", "pods", "list", True),
        Permission("", "pods", "list", True),
        Permission("", "pods", "watch", True),
    }


@pytest.mark.parametrize(("line", "complaint"), [
    ("await core.connect_get_namespaced_pod_exec(name, ns)", "no RBAC mapping for connect_"),
    ("await core.list_namespaced_gizmo(ns)", "not a kubernetes-asyncio API method"),
    ("await custom.list_namespaced_custom_object(group, 'v1', ns, 'pods')", "pass group= as a string literal"),
])
def test_scanner_refuses_calls_it_cannot_map(tmp_path: Path, line: str, complaint: str) -> None:
    source = tmp_path / "calls.py"
    source.write_text(f"async def f(core, custom, group, ns, name):\n    {line}\n")
    with pytest.raises(UnknownApiCall, match=re.escape(complaint)) as excinfo:
        needed(scan_source([source]))
    assert f"{source}:2" in str(excinfo.value)


def test_default_chart_grants_exactly_the_reads_the_code_needs() -> None:
    """Mitigations off: every read the code (and the designed collectors) make is allowed in every
    namespace, nothing else is granted, and no verb writes."""
    required = needed(code_calls())
    reads = {p for p in required if p.verb in READ_VERBS}
    grants = granted(manifests(), FULLNAME, NAMESPACE)
    missing = sorted(str(p) for p in reads if not allows(grants, p))
    assert not missing, f"the chart does not grant what the code calls: {missing}"
    assert {g.verb for g in grants} <= READ_VERBS, sorted(str(g) for g in grants if g.verb not in READ_VERBS)
    extra = as_triples(grants) - as_triples(reads)
    assert not extra, f"the chart grants what no call needs: {sorted(extra)}"


def test_mitigation_writes_hold_only_in_the_listed_namespaces() -> None:
    values = production_values()
    namespaces = values["mitigations"]["namespaces"]
    required = needed(code_calls())
    grants = granted(manifests(values), FULLNAME, NAMESPACE)
    for namespace in namespaces:
        missing = sorted(str(p) for p in required if not allows(grants, p, namespace))
        assert not missing, f"not allowed in {namespace}: {missing}"
    writes = {p for p in required if p.verb not in READ_VERBS}
    assert writes, "the designed calls include writes"
    for write in writes:
        assert not allows(grants, write), f"{write} is granted in every namespace"
        assert not allows(grants, write, "kube-system"), f"{write} is granted outside {namespaces}"
    assert {g.scope for g in grants if g.verb not in READ_VERBS} == set(namespaces)
    extra = as_triples(grants) - as_triples(required)
    assert not extra, f"the chart grants what no call needs: {sorted(extra)}"


def test_reads_can_be_limited_to_listed_namespaces_and_nodes_left_out() -> None:
    grants = granted(manifests({"rbac": {"readNamespaces": ["shop"], "readNodes": False}}), FULLNAME, NAMESPACE)
    pods = Permission("", "pods", "list", True)
    assert allows(grants, pods, "shop")
    assert not allows(grants, pods, "payments")
    assert not allows(grants, Permission("", "nodes", "list", False))
    assert {g.scope for g in grants} == {"shop"}


def test_rbac_objects_are_rendered_only_when_asked_for() -> None:
    kinds = {d["kind"] for d in manifests({"rbac": {"create": False}, "serviceAccount": {"create": False,
                                                                                        "name": "mine"}})}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount"}
    deployment = one(manifests({"serviceAccount": {"create": False, "name": "mine"}}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


# ---- the chart ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lint_config() -> YamlLintConfig:
    return YamlLintConfig(file=str(ROOT / ".yamllint.yaml"))


def test_deployment_yaml_passes_yamllint(lint_config: YamlLintConfig) -> None:
    """The chart's own YAML, the examples and the configs an operator copies."""
    files = [p for p in [*CHART.rglob("*.y*ml"), *(ROOT / "docs").rglob("*.y*ml"), *(ROOT / "deploy").glob("*.y*ml"),
                         ROOT / "config.example.yaml", ROOT / ".yamllint.yaml"]
             if not lint_config.is_file_ignored(str(p.relative_to(ROOT)))]
    assert {CHART / "values.yaml", CHART / "Chart.yaml", PRODUCTION_VALUES, ROOT / "docs" / "production.yaml"} <= set(
        files)
    problems = [f"{p.relative_to(ROOT)}:{problem.line}: {problem.desc}" for p in files
                for problem in linter.run(p.read_text(), lint_config, str(p))]
    assert not problems, problems


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_rendered_chart_passes_yamllint(lint_config: YamlLintConfig, values_name: str) -> None:
    values = production_values() if values_name == "production" else {}
    rendered = render(values)
    problems = []
    for name, text in rendered.items():
        if not name.endswith(".yaml"):
            continue
        for document in re.split(r"^---\s*$", text, flags=re.MULTILINE):
            # Helm trims each manifest before applying it; lint what it applies.
            document = document.strip() + "\n"
            if document.strip():
                problems += [f"{name}:{p.line}: {p.desc}" for p in linter.run(document, lint_config)]
    assert not problems, problems
    expected = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                "PodDisruptionBudget"}
    if values_name == "production":
        expected |= {"RoleBinding", "ServiceMonitor", "PrometheusRule"}
    else:
        expected |= {"PersistentVolumeClaim"}
    assert {d["kind"] for d in manifests(values)} == expected
    assert "RESPONDER_KILL_SWITCH" in rendered["alert-responder/templates/NOTES.txt"]


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_helm_lint_finds_nothing_above_info(values_name: str) -> None:
    values = production_values() if values_name == "production" else {}
    report = helm.lint(str(CHART), values=values, strict=True, namespace=NAMESPACE, kube_version="1.29.0")
    # Severity 1 is INFO ("icon is recommended"). Lint is lenient with `fail`: the render tests cover refusals.
    findings = [m for m in report["messages"] if m["severity"] > 1]
    assert not findings and not report["errors"], report


def rendered_config(docs: list[dict[str, Any]], tmp_path: Path) -> Path:
    config_map = one(docs, "ConfigMap", f"{FULLNAME}-config")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    return path


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_rendered_config_passes_responder_check(tmp_path: Path, values_name: str) -> None:
    docs = manifests(production_values() if values_name == "production" else {})
    path = rendered_config(docs, tmp_path)
    result = responder_cli("check", "--config", str(path), "--rules", "rules", env=dummy_secrets(path))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    config = load_config(path)
    assert config.server.listen == "0.0.0.0:8080"


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_every_secret_the_config_names_reaches_the_pod_from_a_secret(tmp_path: Path, values_name: str) -> None:
    docs = manifests(production_values() if values_name == "production" else {"existingSecret": "s", "secretEnv": {
        "RESPONDER_ALERTMANAGER_TOKEN": "am-token"}})
    config_path = rendered_config(docs, tmp_path)
    env = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    from_secret = {e["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
    referenced = set(dummy_secrets(config_path))
    assert referenced, "the config refers to its secrets by {env: NAME}"
    assert referenced <= from_secret, f"unset in the pod: {sorted(referenced - from_secret)}"
    for e in env:
        assert "value" not in e or not re.search(r"TOKEN|SECRET|PASSWORD|DSN", e["name"]), e
    # No secret value is written into any ConfigMap.
    config_maps = yaml.safe_dump([d for d in docs if d["kind"] == "ConfigMap"])
    assert "dummy-" not in config_maps and "password" not in config_maps.lower()
    assert all(d["kind"] != "Secret" for d in docs), "the chart only refers to Secrets you manage"


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_deployment_is_locked_down_probed_and_drains(tmp_path: Path, values_name: str) -> None:
    values = production_values() if values_name == "production" else {}
    docs = manifests(values)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    drain = load_config(rendered_config(docs, tmp_path)).server.drain_seconds
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    if values_name == "production":
        assert one(docs, "Deployment")["spec"]["replicas"] == 3
        assert mounts["/etc/responder/rules"] == "rules"
        assert "persistentVolumeClaim" not in volumes[mounts["/var/lib/responder"]]
    else:
        assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "Recreate"
        assert "persistentVolumeClaim" in volumes[mounts["/var/lib/responder"]]


@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": 2}, "several replicas need a PostgreSQL store"),
    ({"replicas": 2, "config": {"store": {"url": "postgresql://r@db:5432/r"}}},
     "several replicas need Redis for cross-replica locks"),
    ({"terminationGracePeriodSeconds": 20}, "must exceed preStopSleepSeconds + drainSeconds"),
    ({"mitigations": {"enabled": True}}, "list the namespaces the responder may change"),
    ({"config": {"store": {"url": "postgresql://r:hunter2@db:5432/r"}}}, "contains a password"),
    ({"secretEnv": {"X": "y"}}, "existingSecret is empty"),
])
def test_chart_refuses_unsafe_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_several_replicas_with_postgres_and_redis_render() -> None:
    docs = manifests({"replicas": 2, "existingSecret": "s", "redis": {"enabled": True},
                      "config": {"store": {"url": "postgresql://r@db:5432/r"}}})
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "RESPONDER_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "s", "key": "redis-url"}}} in \
        container["env"]
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_prometheus_rule_is_valid_and_watches_the_responders_own_metrics(tmp_path: Path) -> None:
    rule = one(manifests(production_values()), "PrometheusRule")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    expressions = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    used = set(re.findall(r"\bresponder_[a-z_]+", expressions))
    assert {"responder_slack_oldest_pending_seconds", "responder_jobs_total", "responder_webhook_requests_total",
            "responder_queue_depth"} <= used
    assert 'outcome="failed"' in expressions and 'code=~"5.."' in expressions
    unknown = used - metric_names()
    assert not unknown, f"alerts on metrics the daemon does not export: {unknown}"


def test_grafana_dashboard_configmap_is_optional_and_carries_the_deploy_dashboard() -> None:
    assert not [d for d in manifests() if d["metadata"]["name"] == f"{FULLNAME}-dashboard"]
    values = {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                   "annotations": {"grafana_folder": "Platform"}}}
    config_map = one(manifests(values), "ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    shipped = json.loads(config_map["data"]["alert-responder.json"])
    assert shipped == json.loads((ROOT / "deploy" / "grafana" / "alert-responder.json").read_text())


# ---- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def instruction(stage: list[str], name: str) -> list[str]:
    return [line[len(name):].strip() for line in stage if line.upper().startswith(name + " ")]


def test_dockerfile_final_stage_is_slim_unprivileged_and_runs_the_daemon() -> None:
    builder, final = dockerfile_stages()
    assert re.search(r"\bAS builder\b", builder[0])
    assert "python:3.11-slim" in (ROOT / "Dockerfile").read_text()
    assert any("pip wheel" in run for run in instruction(builder, "RUN"))
    runs = " ".join(instruction(final, "RUN"))
    assert "from=builder" in runs and "--no-index" in runs, "the final stage installs the builder's wheels"
    assert not re.search(r"\b(gcc|g\+\+|clang|build-essential|make|cc|libc6-dev|python3-dev)\b", runs), runs
    assert "apt-get install" not in runs
    users = instruction(final, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    healthcheck = " ".join(instruction(final, "HEALTHCHECK"))
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    entrypoint = json.loads(instruction(final, "ENTRYPOINT")[-1])
    assert entrypoint[:2] == ["responder", "serve"]
    command = json.loads(instruction(final, "CMD")[-1])
    assert command == ["--config", "/etc/responder/config.yaml"]
    assert any(c.split()[-1] == "/app/rules" for c in instruction(final, "COPY"))


def test_dockerignore_keeps_every_copied_path_and_nothing_else() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*", "everything is excluded unless named"
    kept = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for stage in dockerfile_stages():
        for copy in instruction(stage, "COPY"):
            if copy.startswith("--from"):
                continue
            *sources, _destination = shlex.split(copy)
            for source in sources:
                assert source.rstrip("/") in kept, f"COPY {source} is excluded by .dockerignore"
                assert (ROOT / source).exists(), source


def test_image_default_config_passes_check() -> None:
    path = ROOT / "deploy" / "container-config.yaml"
    result = responder_cli("check", "--config", str(path), "--rules", "rules", env=dummy_secrets(path))
    assert result.returncode == 0, result.stderr
    assert load_config(path).server.host_port == ("0.0.0.0", 8080)


# ---- example configurations ---------------------------------------------------------------------------


def test_config_example_passes_check_on_embedded_defaults() -> None:
    result = responder_cli("check", "--config", "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert load_config(ROOT / "config.example.yaml").store.url.startswith("sqlite:")


def test_production_config_passes_check_with_its_secrets_set() -> None:
    path = ROOT / "docs" / "production.yaml"
    secrets = dummy_secrets(path)
    result = responder_cli("check", "--config", str(path), "--rules", "rules", env=secrets)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    config = load_config(path)
    assert config.store.url.startswith("postgresql://") and "@" in config.store.url
    assert config.mitigations.mode == "enforce"
    assert any(t.in_cluster for t in config.targets.kubernetes.values())
    assert {ref.env for _, ref in iter_secret_refs(config)} == set(secrets)
    # Without its secrets the same file still loads (unset variables are unset credentials) but check warns.
    unset = responder_cli("check", "--config", str(path), "--rules", "rules")
    assert "no credentials configured" in unset.stderr


def test_production_durations_fit_the_charts_grace_period() -> None:
    config = load_config(ROOT / "docs" / "production.yaml")
    values = production_values()
    assert values["drainSeconds"] == parse_duration("20s") == config.server.drain_seconds
    assert values["terminationGracePeriodSeconds"] > values["preStopSleepSeconds"] + values["drainSeconds"]


def test_alertmanager_example_is_valid_and_reaches_the_intake() -> None:
    path = ROOT / "docs" / "examples" / "alertmanager.yaml"
    result = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    receiver = yaml.safe_load(path.read_text())["receivers"][0]["webhook_configs"][0]
    assert receiver["send_resolved"] is True
    assert receiver["http_config"]["authorization"]["credentials_file"]
    intake_paths = {i.path for i in build_intakes(load_config(ROOT / "docs" / "production.yaml"))}
    assert receiver["url"].split(":8080", 1)[1] in intake_paths


def test_slack_and_pagerduty_examples() -> None:
    manifest = yaml.safe_load((ROOT / "docs" / "examples" / "slack-app-manifest.yaml").read_text())
    # history scopes: a message that may already be posted (crash, timeout) is looked up, not sent twice;
    # usergroups:read: the user groups of sinks.slack.permissions
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {"chat:write", "files:write", "channels:history",
                                                              "groups:history", "channels:read", "usergroups:read"}
    assert manifest["settings"]["interactivity"]["request_url"].endswith("/slack/interactions")
    subscription = json.loads((ROOT / "docs" / "examples" / "pagerduty-webhook-subscription.json").read_text())
    body = subscription["webhook_subscription"]
    assert body["delivery_method"]["type"] == "http_delivery_method"
    assert body["delivery_method"]["url"].endswith("/webhooks/pagerduty")
    assert {"incident.triggered", "incident.resolved"} <= set(body["events"])
