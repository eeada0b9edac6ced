"""The Grafana dashboard (deploy/grafana/, the chart's optional ConfigMap): every panel query, with Grafana's
variables filled in, runs on a real Prometheus scraping a real daemon that has done some work, parses, and
returns data."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from responder.metrics import Metrics
from tests.support.alerts import am_alert, am_payload
from tests.support.live_daemon import LiveDaemon, live_daemon
from tests.support.processes import REPO

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "deploy" / "grafana" / "alert-responder.json"
CHART_COPY = REPO / "helm" / "alert-responder" / "dashboards" / "alert-responder.json"
# Grafana fills these in before it queries; the test fills them in the same way for a 1 s scrape interval.
VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m", "$job": "test"}

RULES = {"rules": [{
    "name": "web-errors",
    "match": ['alertname="WebErrors"'],
    "collectors": [
        {"id": "health", "type": "http.check", "params": {"target": "self", "path": "/healthz"}},
        {"id": "pods", "type": "kubernetes.pods", "params": {"namespace": "prod",
                                                             "selector": "app={{ labels.deployment | label_value }}"}},
    ],
    "mitigations": [
        {"id": "ping", "type": "http.request", "params": {"target": "self", "path": "/healthz", "method": "GET"}},
        {"id": "never", "type": "http.request", "params": {"target": "self", "path": "/readyz", "method": "GET"},
         "when": ["evidence.health.payload.status_code >= 500"]},
    ],
}]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expression) for every query target of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def filled(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def metrics_in(expr: str) -> set[str]:
    return {m.removesuffix("_bucket") for m in re.findall(r"\bresponder_[a-z_]+", expr)}


def test_the_chart_ships_the_same_dashboard_and_it_names_only_real_metrics() -> None:
    assert DASHBOARD.read_text() == CHART_COPY.read_text()
    board = dashboard()
    assert board["uid"] == "alert-responder"
    used = set().union(*(metrics_in(expr) for _, expr in panel_queries()))
    exported = {family.name + ("_total" if family.type == "counter" else "")
                for family in Metrics().registry.collect()}
    assert used <= exported, f"panels query metrics the daemon does not export: {used - exported}"
    # What an operator asked the dashboard for: intake, queue, time to evidence, actions, Slack, task restarts.
    assert {"responder_webhook_requests_total", "responder_queue_depth", "responder_pipeline_duration_seconds",
            "responder_actions_total", "responder_slack_calls_total", "responder_slack_oldest_pending_seconds",
            "responder_task_restarts_total"} <= used
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    # A Kubernetes API that refuses connections: the pods collector runs and fails, as with a cluster down.
    targets = {"kubernetes": {"default": {"url": "http://127.0.0.1:9"}}}
    with live_daemon(tmp_path_factory.mktemp("dashboard"), RULES, targets=targets) as running:
        yield running


def work(daemon: LiveDaemon, wave: int) -> None:
    """Everything the panels count: matched and unmatched alerts, a step that cannot render, a refused
    webhook, dry-run and skipped mitigations, Slack threads. Each alert is a group (an incident) of its own."""
    alerts = [am_alert("WebErrors", labels={"deployment": "api", "wave": str(wave)}),
              am_alert("WebErrors", labels={"deployment": "Not A Name!", "wave": str(wave)}),
              am_alert("Unmatched", labels={"wave": str(wave)})]
    for alert in alerts:
        group = f'{{}}:{{fingerprint="{alert["fingerprint"]}"}}'
        assert daemon.post("/webhooks/alertmanager", am_payload(alert, group_key=group)) == 200
    assert daemon.post("/webhooks/alertmanager", b"{not json") == 400
    deadline = time.monotonic() + 30
    while len(daemon.slack.parents("#incidents")) < 3 * wave:
        assert time.monotonic() < deadline, daemon.process.output()[-3000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def scraped(daemon: LiveDaemon) -> LiveDaemon:
    daemon.wait_scraped('count_over_time(up{job="test"}[1m])', 2)
    # Two waves a few scrapes apart, so every rate and histogram quantile has an increase inside its window.
    work(daemon, 1)
    time.sleep(3)
    work(daemon, 2)
    time.sleep(3)
    return daemon


def test_the_job_variable_lists_the_scraped_daemon(scraped: LiveDaemon) -> None:
    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "job")
    (metric,) = re.findall(r"label_values\((\w+), job\)", variable["definition"])
    answer = scraped.prometheus("label/job/values", **{"match[]": metric})
    assert answer["data"] == ["test"]


@pytest.mark.parametrize(("title", "expr"), panel_queries(), ids=[f"{t}:{e[:40]}" for t, e in panel_queries()])
def test_every_panel_query_parses_and_returns_data(scraped: LiveDaemon, title: str, expr: str) -> None:
    answer = scraped.prometheus("query", query=filled(expr))
    assert answer["status"] == "success", f"{title}: {answer.get('error')}"
    values = [float(r["value"][1]) for r in answer["data"]["result"]]
    assert any(math.isfinite(v) for v in values), f"{title}: {filled(expr)} returned {answer['data']['result']}"


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        g = panel["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, panel["title"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        taken |= cells

