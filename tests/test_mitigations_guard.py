"""The guard end to end, on both stores: alert storms act once, dry-run acts never, conditions, the
kill switch API, fail-closed locking, the audit and its CLI."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from responder.cli import main as cli_main
from tests.conftest import make_config, write_rules
from tests.support.admin import AdminEndpoint, admin_endpoint
from tests.support.alerts import am_alert, am_payload
from tests.support.services import free_port

# By default one incident per alert (`group_by: ['...']`): a storm of incidents deciding about one target.
RULES = """
rules:
  - name: api-down
    match: ['alertname="ApiDown"']
    group_by: {group_by}
    mitigations:
      - id: fallback
        type: http.request
        mode: {mode}
        when: {when}
        params:
          target: app
          path: /admin/fallback/enable
          json: {{deployment: "{{{{ labels.deployment }}}}"}}
"""


def now_iso(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alerts(count: int, deployment: str = "api", **labels: str) -> list[dict[str, Any]]:
    started = now_iso(-60)
    return [am_alert("ApiDown", starts_at=started, labels={"deployment": deployment, "pod": f"{deployment}-{i}",
                                                            **labels}) for i in range(count)]


def config_for(store_url: str, tmp_path: Path, endpoint: AdminEndpoint, *, mode: str = "enforce",
               when: str = "[]", group_by: str = "['...']", **overrides: Any) -> Any:
    rules = write_rules(tmp_path / "rules", RULES.format(mode=mode, when=when, group_by=group_by))
    targets = {"http": {"app": {"url": endpoint.url, "headers": {"Authorization": {"env": "APP_ADMIN_TOKEN"}}}}}
    return make_config(store_url, rules, **{"targets": targets, "mitigations.mode": "enforce",
                                            "pipeline.workers": 8, **overrides})


async def post_burst(client: Any, batch: list[dict[str, Any]], per_request: int = 10) -> None:
    chunks = [batch[i:i + per_request] for i in range(0, len(batch), per_request)]
    responses = await asyncio.gather(*(client.post("/webhooks/alertmanager", json=am_payload(*chunk))
                                       for chunk in chunks))
    assert [r.status for r in responses] == [200] * len(chunks)


async def wait_processed(daemon: Any, incidents: int, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with daemon.store.db.transaction() as conn:
                n = await conn.fetchval("SELECT COUNT(*) FROM incidents WHERE processed_at IS NOT NULL")
            if int(n) >= incidents:
                return
            await asyncio.sleep(0.05)


async def audit(daemon: Any) -> list[dict[str, Any]]:
    async with daemon.store.db.transaction() as conn:
        return [dict(r) for r in await conn.fetch("SELECT * FROM actions ORDER BY id")]


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ADMIN_TOKEN", "Bearer admin-secret")
    monkeypatch.delenv("RESPONDER_KILL_SWITCH", raising=False)


async def test_storm_of_500_alerts_acts_exactly_once(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        client, daemon = await daemon_client(config_for(store_url, tmp_path, endpoint))
        started = time.monotonic()
        await post_burst(client, alerts(500))
        await wait_processed(daemon, 500)
        elapsed = time.monotonic() - started
        rows = await audit(daemon)
    assert len(endpoint.calls) == 1
    call = endpoint.calls[0]
    assert (call["method"], call["path"], json.loads(call["body"])) == ("POST", "/admin/fallback/enable",
                                                                          {"deployment": "api"})
    assert call["authorization"] == "Bearer admin-secret"
    outcomes = [r["outcome"] for r in rows]
    assert len(rows) == 500 and outcomes.count("executed") == 1 and outcomes.count("skipped") == 499
    assert {r["guard"] for r in rows if r["outcome"] == "skipped"} <= {"cooldown", "lock"}
    executed = next(r for r in rows if r["outcome"] == "executed")
    assert executed["target"] == "http/app/admin/fallback/enable" and json.loads(executed["output"])["status"] == 200
    print(f"storm of 500 alerts processed in {elapsed:.1f}s on {daemon.store.dialect}")


async def test_dry_run_storm_writes_nothing_and_records_one_would_be_action(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        # The global mode is enforce; the step's dry-run is the more cautious setting and wins.
        client, daemon = await daemon_client(config_for(store_url, tmp_path, endpoint, mode="dry-run"))
        await post_burst(client, alerts(500))
        await wait_processed(daemon, 500)
        rows = await audit(daemon)
    assert endpoint.calls == []
    dry = [r for r in rows if r["outcome"] == "dry-run"]
    assert len(dry) == 1 and len(rows) == 500
    assert dry[0]["description"] == ("POST /admin/fallback/enable on app with a JSON body,"
                                     " expecting [200, 201, 202, 204]")
    assert json.loads(dry[0]["params"])["json"] == {"deployment": "api"}
    assert {r["guard"] for r in rows if r["outcome"] == "skipped"} == {"cooldown"}


async def test_false_condition_skips_with_the_reason(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    when = '[\'labels.severity == "page"\']'
    async with admin_endpoint() as endpoint:
        client, daemon = await daemon_client(config_for(store_url, tmp_path, endpoint, when=when))
        await post_burst(client, alerts(1))
        await wait_processed(daemon, 1)
        rows = await audit(daemon)
    assert endpoint.calls == []
    assert [(r["outcome"], r["guard"]) for r in rows] == [("skipped", "condition")]
    assert rows[0]["reason"] == "condition 'labels.severity == \"page\"' is false: labels.severity is 'critical'"


async def test_kill_switch_api_stops_every_action(daemon_client: Any, store_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESPONDER_API_TOKEN", "api-token-1234")
    async with admin_endpoint() as endpoint:
        config = config_for(store_url, tmp_path, endpoint, **{"server.api_token": {"env": "RESPONDER_API_TOKEN"}})
        client, daemon = await daemon_client(config)
        refused = await client.post("/api/kill-switch", json={"enabled": True})
        assert refused.status == 401
        bad = await client.post("/api/kill-switch", json={"enabled": "yes"},
                                headers={"Authorization": "Bearer api-token-1234"})
        assert bad.status == 400
        on = await client.post("/api/kill-switch", json={"enabled": True, "reason": "maintenance"},
                               headers={"Authorization": "Bearer api-token-1234"})
        assert on.status == 200 and (await on.json())["enabled"] is True
        await post_burst(client, alerts(3, deployment="web"))
        await wait_processed(daemon, 3)
        assert endpoint.calls == []
        rows = await audit(daemon)
        assert {(r["outcome"], r["guard"]) for r in rows} == {("skipped", "kill_switch")}
        assert "maintenance" in rows[0]["reason"]

        off = await client.post("/api/kill-switch", json={"enabled": False},
                                headers={"Authorization": "Bearer api-token-1234"})
        assert (await off.json())["enabled"] is False
        await post_burst(client, alerts(1, deployment="db"))
        await wait_processed(daemon, 4)
    assert len(endpoint.calls) == 1


async def test_redis_down_fails_closed(daemon_client: Any, store_url: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCK_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    async with admin_endpoint() as endpoint:
        config = config_for(store_url, tmp_path, endpoint,
                            **{"mitigations.redis": {"url": {"env": "LOCK_REDIS_URL"}, "timeout": "500ms"}})
        client, daemon = await daemon_client(config)
        await post_burst(client, alerts(2))
        await wait_processed(daemon, 2)
        rows = await audit(daemon)
    assert endpoint.calls == []
    assert [(r["outcome"], r["guard"]) for r in rows] == [("skipped", "lock")] * 2
    assert all(r["reason"].startswith("fail-closed: redis lock service unreachable") for r in rows)


async def test_actions_list_cli_shows_the_audit(daemon_client: Any, store_url: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    async with admin_endpoint(status=503) as endpoint:
        config = config_for(store_url, tmp_path, endpoint, **{"sinks.console.enabled": False})
        client, daemon = await daemon_client(config)
        await post_burst(client, alerts(1))
        await wait_processed(daemon, 1)
    assert await asyncio.to_thread(cli_main, ["actions", "list", "--store", store_url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["outcome"] == "failed"
    assert rows[0]["reason"].startswith("RuntimeError: POST /admin/fallback/enable answered 503")
    incident = rows[0]["incident_id"]
    assert await asyncio.to_thread(cli_main, ["actions", "list", "--store", store_url, "--incident", str(incident + 1),
                                                "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


async def test_budgets_allow_lists_and_alert_age(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        config = config_for(store_url, tmp_path, endpoint, **{
            "mitigations.cooldown": 0, "mitigations.max_per_day": 2, "mitigations.max_per_hour": 3,
            "mitigations.allow_targets": ["http/app/admin/*"], "pipeline.workers": 1})
        rules = tmp_path / "rules" / "rules.yaml"
        rules.write_text(rules.read_text() + """
  - name: other-path
    match: ['alertname="Other"']
    mitigations:
      - {type: http.request, params: {target: app, path: /internal/flush}}
""")
        client, daemon = await daemon_client(config)
        # Three incidents for one target: two within the daily budget, the third refused.
        for i in range(3):
            await post_burst(client, alerts(1, deployment=f"api{i}"))
            await wait_processed(daemon, i + 1)
        old = am_alert("ApiDown", starts_at=now_iso(-7200), labels={"deployment": "old"})
        other = am_alert("Other", starts_at=now_iso(-60))
        await post_burst(client, [old, other])
        await wait_processed(daemon, 5)
        rows = await audit(daemon)
    assert [(r["outcome"], r["guard"]) for r in rows[:3]] == [("executed", None), ("executed", None),
                                                               ("skipped", "budget")]
    assert rows[2]["reason"] == "http.request on http/app/admin/fallback/enable already ran 2 time(s) in 24h (max 2)"
    by_rule = {r["rule"]: r for r in rows[3:]}
    assert (by_rule["other-path"]["guard"], by_rule["other-path"]["reason"]) == (
        "allow_list", "target http/app/internal/flush is not in mitigations.allow_targets")
    assert by_rule["api-down"]["guard"] == "alert_age"
    assert len(endpoint.calls) == 2


async def test_global_hourly_budget_holds_across_targets(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        config = config_for(store_url, tmp_path, endpoint, **{"mitigations.max_per_hour": 2, "pipeline.workers": 1})
        rules = tmp_path / "rules" / "rules.yaml"
        rules.write_text(rules.read_text().replace("/admin/fallback/enable", '"/admin/{{ labels.deployment }}"'))
        client, daemon = await daemon_client(config)
        for i, name in enumerate(("a", "b", "c")):
            await post_burst(client, alerts(1, deployment=name))
            await wait_processed(daemon, i + 1)
        rows = await audit(daemon)
    assert [(r["target"], r["outcome"], r["guard"]) for r in rows] == [
        ("http/app/admin/a", "executed", None), ("http/app/admin/b", "executed", None),
        ("http/app/admin/c", "skipped", "global-budget")]
    assert [c["path"] for c in endpoint.calls] == ["/admin/a", "/admin/b"]
