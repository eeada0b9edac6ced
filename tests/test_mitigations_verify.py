"""Verification: a while after an action, a Prometheus check says whether it helped; an action that
did not help marks its incident for escalation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

import tests.support.plugins  # noqa: F401  (the test.sleep collector)
from tests.conftest import make_config, write_rules
from tests.support.admin import admin_endpoint
from tests.support.prometheus import Prometheus
from tests.test_mitigations_guard import alerts, audit, post_burst, wait_processed

pytestmark = pytest.mark.slow

# The error rate each check sees: 0.01 after the api action (recovered), 1 after the web one (not).
RULE = """
  - name: {deployment}-down
    match: ['alertname="ApiDown"', 'deployment="{deployment}"']
    mitigations:
      - id: fallback
        type: http.request
        params: {{target: app, path: "/admin/fallback/{{{{ labels.deployment }}}}"}}
        verify:
          after: 300ms
          prometheus: {{target: main, query: "vector({value})", below: 0.05}}
"""

# Verification by a collector step of the rule, run again after the action.
COLLECTOR_RULE = """
  - name: cache-down
    match: ['alertname="ApiDown"', 'deployment="cache"']
    collectors:
      - {id: probe, type: test.sleep, params: {seconds: 0.05, label: probed}}
    mitigations:
      - id: fallback
        type: http.request
        params: {target: app, path: /admin/cache/bypass}
        verify:
          after: 300ms
          collector: probe
          when: ["evidence.probe.payload.seconds < 1", "evidence.probe.status == 'ok'"]
"""


async def test_verification_records_recovery_and_escalates_when_not_recovered(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint, Prometheus(tmp_path / "prom") as prometheus:
        rules = write_rules(tmp_path / "rules", "rules:" + RULE.format(deployment="api", value="0.01")
                            + RULE.format(deployment="web", value="1") + COLLECTOR_RULE)
        config = make_config(store_url, rules, **{
            "mitigations.mode": "enforce",
            "targets": {"http": {"app": {"url": endpoint.url}}, "prometheus": {"main": {"url": prometheus.url}}},
        })
        client, daemon = await daemon_client(config)
        await post_burst(client, alerts(1, deployment="api") + alerts(1, deployment="web")
                         + alerts(1, deployment="cache"))
        await wait_processed(daemon, 3)
        async with asyncio.timeout(15):
            while not (rows := await audit(daemon)) or any(r["verification"] is None for r in rows):
                await asyncio.sleep(0.1)
        async with daemon.store.db.read() as conn:
            rows_by_rule = await conn.fetch("SELECT rule, escalation FROM incidents")
        escalations = {r["rule"]: r["escalation"] for r in rows_by_rule}
    results = {r["rule"]: (r["outcome"], json.loads(r["verification"])) for r in rows}
    assert sorted(c["path"] for c in endpoint.calls) == ["/admin/cache/bypass", "/admin/fallback/api",
                                                         "/admin/fallback/web"]
    assert results["cache-down"] == ("executed", {"recovered": True, "detail": "all verify conditions hold"})
    assert results["api-down"] == ("executed", {"recovered": True,
                                                "detail": "'vector(0.01)' = 0.01 (recovered below 0.05)"})
    assert results["web-down"] == ("executed", {"recovered": False,
                                                "detail": "'vector(1)' = 1 (recovered below 0.05)"})
    assert escalations["api-down"] is None
    assert escalations["web-down"].endswith("did not help: 'vector(1)' = 1 (recovered below 0.05)")
