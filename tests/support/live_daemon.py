"""A real daemon process with a real Prometheus scraping it (job "test", every second) and the Slack fake
as its Slack, for synchronous tests (a browser, Prometheus queries) that look at a running system."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.fakes.slack_api import FakeSlack
from tests.support.background import BackgroundLoop
from tests.support.processes import ManagedProcess, responder_daemon, wait_http
from tests.support.prometheus import Prometheus
from tests.support.services import free_port

SLACK_TOKEN = "xoxb-live-daemon-test"
SLACK_WORKSPACE = "https://acme.slack.com"


@dataclass
class LiveDaemon:
    url: str
    process: ManagedProcess
    slack: FakeSlack
    prometheus_url: str

    def post(self, path: str, payload: Any) -> int:
        """POST JSON (or raw bytes) to the daemon; the HTTP status, refusals included."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def prometheus(self, api: str, **params: str) -> dict[str, Any]:
        """A Prometheus HTTP API answer (`/api/v1/...`), errors (such as a query that does not parse) included."""
        url = f"{self.prometheus_url}/api/v1/{api}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        return answer

    def wait_scraped(self, expr: str, minimum: float, timeout: float = 30) -> None:
        """Until the instant query `expr` returns a value of at least `minimum`."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.prometheus("query", query=expr).get("data", {}).get("result", [])
            if result and float(result[0]["value"][1]) >= minimum:
                return
            assert time.monotonic() < deadline, f"Prometheus never saw {expr} >= {minimum}"
            time.sleep(0.5)


def write_config(workdir: Path, port: int, prometheus_url: str, slack: FakeSlack, rules: dict[str, Any],
                 server: dict[str, Any], targets: dict[str, Any]) -> Path:
    (workdir / "rules").mkdir(parents=True, exist_ok=True)
    (workdir / "rules" / "rules.yaml").write_text(yaml.safe_dump(rules))
    config = {
        "server": server,
        "store": {"url": f"sqlite:///{workdir / 'responder.db'}", "poll_interval": 0.05},
        "rules": {"dirs": [str(workdir / "rules")]},
        "intakes": {"alertmanager": {"auth": {"unauthenticated": "loopback"}},
                    "grafana": {"auth": {"unauthenticated": "loopback"}}},
        "targets": {"prometheus": {"main": {"url": prometheus_url}},
                    "http": {"self": {"url": f"http://127.0.0.1:{port}"}}, **targets},
        "sinks": {"console": {"enabled": False},
                  "slack": {"token": {"env": "RESPONDER_SLACK_TOKEN"}, "api_url": slack.api_url,
                            "default_channel": "#incidents", "rate_per_channel": 50, "update_rate": 50, "timeout": "2s",
                            "workspace_url": SLACK_WORKSPACE}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def live_daemon(workdir: Path, rules: dict[str, Any], *, server: dict[str, Any] | None = None,
                targets: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Iterator[LiveDaemon]:
    """The daemon (its targets: Prometheus `main`, itself as http `self`, and `targets`), its Prometheus,
    its Slack."""
    port = free_port()
    background = BackgroundLoop()
    slack = background.run(FakeSlack(SLACK_TOKEN).__aenter__())
    prometheus = Prometheus(workdir / "prometheus", scrape=[f"127.0.0.1:{port}"])
    try:
        background.run(prometheus.__aenter__())
        config = write_config(workdir, port, prometheus.url, slack, rules, server or {}, targets or {})
        process = responder_daemon(config, port, workdir / "daemon.log",
                                   extra_env={"RESPONDER_SLACK_TOKEN": SLACK_TOKEN, **(env or {})}).start()
        try:
            background.run(wait_http(f"http://127.0.0.1:{port}/readyz", timeout=30, proc=process))
            yield LiveDaemon(f"http://127.0.0.1:{port}", process, slack, prometheus.url)
        finally:
            process.stop()
    finally:
        background.run(prometheus.__aexit__(None, None, None))
        background.run(slack.__aexit__(None, None, None))
        background.close()
