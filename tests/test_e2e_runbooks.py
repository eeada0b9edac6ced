"""End to end with the shipped rules: a real Prometheus scrapes a test application and fires HighErrorRate,
a real Alertmanager delivers it with a bearer token to the daemon (a subprocess), which gathers evidence from
Prometheus and the Kubernetes API fake and rolls back the fresh deploy: first in dry-run (nothing written),
then enforced (the fake receives the rollback). The Slack sink is not on this branch yet: the bundle is read
from the store (`incidents` / `actions` commands) and the console sink's output."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.fakes.kube_api import FakeKubeAPI
from tests.support.alertmanager import Alertmanager
from tests.support.processes import REPO, ManagedProcess, responder_daemon, wait_http
from tests.support.services import free_port, require

log = logging.getLogger(__name__)
TOKEN = "e2e-alertmanager-token"
ALERT_RULES = {"groups": [{"name": "api", "interval": "1s", "rules": [{
    "alert": "HighErrorRate",
    "expr": 'sum by (namespace, job) (rate(http_requests_total{status=~"5.."}[4s]))'
            ' / sum by (namespace, job) (rate(http_requests_total[4s])) > 0.05',
    "for": "2s",
    "labels": {"severity": "critical", "deployment": "api"},
    "annotations": {"summary": "5xx above 5%"},
}]}]}


class ErrorRateApp:
    """A tiny API that counts requests by status; the test sets which share of them fail."""

    def __init__(self) -> None:
        self.error_share = 0.0
        self.counts = {"200": 0, "500": 0}
        self.url = ""

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# TYPE http_requests_total counter"]
        lines += [f'http_requests_total{{status="{s}"}} {n}' for s, n in self.counts.items()]
        return web.Response(text="\n".join(lines) + "\n")

    async def traffic(self) -> None:
        while True:
            self.counts["500"] += round(100 * self.error_share)
            self.counts["200"] += 100 - round(100 * self.error_share)
            await asyncio.sleep(0.1)


@pytest.fixture
async def app() -> AsyncIterator[tuple[ErrorRateApp, str]]:
    service = ErrorRateApp()
    web_app = web.Application()
    web_app.router.add_get("/metrics", service.metrics)
    server = TestServer(web_app, host="127.0.0.1")
    await server.start_server()
    task = asyncio.create_task(service.traffic())
    try:
        yield service, f"127.0.0.1:{server.port}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()


class AlertingPrometheus:
    """Prometheus scraping the app every second, evaluating the alert every second, sending to Alertmanager."""

    def __init__(self, workdir: Path, scrape: str, alertmanager: str) -> None:
        self.binary = shutil.which("prometheus") or ""
        if not self.binary:
            require("Prometheus", "install the Debian package prometheus")
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "alerts.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
            "scrape_configs": [{"job_name": "api", "static_configs": [{"targets": [scrape],
                                                                        "labels": {"namespace": "shop"}}]}],
        }
        self.process: ManagedProcess | None = None

    async def __aenter__(self) -> AlertingPrometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "alerts.yml").write_text(yaml.safe_dump(ALERT_RULES))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self.config))
        self.process = ManagedProcess(
            [self.binary, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], self.workdir / "prometheus.log").start()
        await wait_http(f"{self.url}/-/ready", timeout=30, proc=self.process)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.stop()


def seed_bad_deploy(kube: FakeKubeAPI) -> None:
    """shop/api: revision 2 (image api:2.0) deployed five minutes ago over revision 1 (api:1.9); its pods log errors."""
    fresh = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    deployment = kube.add_deployment("shop", "api", replicas=2, revision=2, image="api:2.0")
    kube.add_replicaset(deployment, 1, "api:1.9", "old111", created="2024-05-01T10:00:00Z")
    kube.add_replicaset(deployment, 2, "api:2.0", "new222", created=fresh, replicas=2)
    for pod in ("api-new222-a", "api-new222-b"):
        kube.add_pod("shop", pod, labels={"app": "api"}, containers=[{
            "name": "api", "image": "api:2.0", "ready": True, "restartCount": 0, "state": {"running": {}}}])
        kube.logs[("shop", pod, "api", False)] = "INFO start\nERROR KeyError: 'bill_id' in /api/bills\nINFO ok\n"


def write_config(tmp: Path, name: str, *, mode: str, kube: FakeKubeAPI, prometheus: str) -> Path:
    config = {
        "store": {"url": f"sqlite:///{tmp / (name + '.db')}"},
        "rules": {"dirs": [str(REPO / "rules")]},
        "intakes": {"alertmanager": {"auth": {"bearer_token": {"env": "E2E_AM_TOKEN"}, "unauthenticated": "reject"}}},
        "targets": {"kubernetes": {"default": {"url": kube.url, "verify_tls": False}},
                    "prometheus": {"main": {"url": prometheus}}},
        "sinks": {"console": {"enabled": True}},
        "mitigations": {"mode": mode},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli_json(config: Path, *args: str) -> Any:
    result = subprocess.run([sys.executable, "-m", "responder", *args, "--config", str(config), "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"not within {timeout}s: {what}")


async def run_cycle(tmp: Path, name: str, mode: str, service: ErrorRateApp, kube: FakeKubeAPI,
                    prometheus: str, daemon_port: int) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Raise the error rate until the incident's actions are decided, then lower it until it resolves."""
    config = write_config(tmp, name, mode=mode, kube=kube, prometheus=prometheus)
    daemon = responder_daemon(config, daemon_port, tmp / f"{name}.log", extra_env={"E2E_AM_TOKEN": TOKEN}).start()
    try:
        await wait_http(f"http://127.0.0.1:{daemon_port}/readyz", timeout=30, proc=daemon)
        service.error_share = 0.3
        raised = time.monotonic()

        def incident() -> dict[str, Any] | None:
            found = [i for i in cli_json(config, "incidents", "list") if i["alertname"] == "HighErrorRate"]
            return found[0] if found else None

        opened = await until(incident, 40, "HighErrorRate reaches the daemon")
        delivered = time.monotonic()

        def decided() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = cli_json(config, "actions", "list", "--incident", str(opened["id"]))
            return rows if any(r["action"] == "kubernetes.rollout_undo" for r in rows) else []

        actions = await until(decided, 20, "the rule's mitigations are decided")
        log.warning("%s: alert raised -> incident stored %.1fs, -> actions decided %.1fs", name,
                    delivered - raised, time.monotonic() - delivered)
        service.error_share = 0.0
        resolved = await until(lambda: (i := incident()) and i["status"] == "resolved" and i, 40,
                               "the resolution reaches the daemon")
        return resolved, actions, daemon.output()
    finally:
        daemon.stop()


async def test_high_error_rate_from_prometheus_to_rollback(tmp_path: Path, app: tuple[ErrorRateApp, str]) -> None:
    service, scrape = app
    daemon_port = free_port()
    async with FakeKubeAPI() as kube:
        seed_bad_deploy(kube)
        async with Alertmanager(tmp_path / "am", f"http://127.0.0.1:{daemon_port}/webhooks/alertmanager",
                                bearer_token=TOKEN, group_wait="1s", group_interval="1s") as am, \
                AlertingPrometheus(tmp_path / "prom", scrape, f"127.0.0.1:{am.port}") as prom:
            resolved, actions, output = await run_cycle(tmp_path, "dry", "dry-run", service, kube, prom.url,
                                                        daemon_port)
            assert resolved["rule"] == "high-error-rate"
            rollback = next(a for a in actions if a["action"] == "kubernetes.rollout_undo")
            assert rollback["outcome"] == "dry-run", rollback
            assert kube.writes() == []
            # The bundle: Prometheus' ratio, pods, the ERROR lines and the rollout history were gathered.
            for evidence in ("http_requests_total", "ERROR KeyError", "api:1.9"):
                assert evidence in output, evidence

            resolved, actions, _ = await run_cycle(tmp_path, "enforce", "enforce", service, kube, prom.url,
                                                   daemon_port)
            rollback = next(a for a in actions if a["action"] == "kubernetes.rollout_undo")
            assert rollback["outcome"] == "executed", rollback
            patches = [w for w in kube.writes() if w.path == "/apis/apps/v1/namespaces/shop/deployments/api"]
            assert len(patches) == 1
            template = kube.deployments[("shop", "api")]["spec"]["template"]
            assert template["spec"]["containers"][0]["image"] == "api:1.9"
