"""Replay, explain, test-rules and /api/replay: against payloads captured from a real Alertmanager."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from responder.store import open_store
from responder.store.actions import KILL_SWITCH, ActionStore
from tests.conftest import make_config, write_rules
from tests.support.alertmanager import Alertmanager
from tests.support.alerts import am_alert, am_payload
from tests.support.processes import REPO, daemon_env
from tests.support.services import free_port

RULES = """
rules:
  - name: disk
    match: ['alertname="DiskFull"', 'severity=~"critical|page"']
    collectors:
      - id: usage
        type: test.sleep
        params: {seconds: 0.05, label: "disk usage on {{ labels.instance }}"}
    mitigations:
      - id: cleanup
        type: test.record
        params: {target: "{{ labels.instance }}"}
        requires_approval: false
  - name: catch-all
    match: ['severity="warning"']
"""


def write_setup(tmp_path: Path, store_url: str, action_log: Path, mode: str = "dry-run") -> Path:
    rules = write_rules(tmp_path / "rules", RULES)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "store": {"url": store_url}, "rules": {"dirs": [str(rules)]}, "plugins": ["tests.support.plugins"],
        "mitigations": {"mode": mode, "cooldown": 0}, "sinks": {"console": {"enabled": False}},
    }))
    return config


def cli(*args: str, action_log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = daemon_env({"COLUMNS": "200", **({"RESPONDER_TEST_ACTION_LOG": str(action_log)} if action_log else {})})
    return subprocess.run([sys.executable, "-m", "responder", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


@pytest.fixture
async def captured(tmp_path: Path) -> bytes:
    """One webhook body exactly as a real Alertmanager sent it."""
    bodies: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with Alertmanager(tmp_path / "am", f"http://127.0.0.1:{port}/hook") as am:
            am.amtool_alert({"alertname": "DiskFull", "severity": "critical", "instance": "db-1"},
                            annotations={"summary": "disk 97% full"})
            async with asyncio.timeout(30):
                while not bodies:
                    await asyncio.sleep(0.1)
    finally:
        await runner.cleanup()
    return bodies[0]


async def test_replay_of_a_real_alertmanager_payload_matches_live_delivery(
        captured: bytes, tmp_path: Path, store_url: str, daemon_client: Any) -> None:
    action_log = tmp_path / "actions.log"
    payload = tmp_path / "captured.json"
    payload.write_bytes(captured)
    assert json.loads(captured)["version"] == "4"

    # Live: the daemon receives the captured body over HTTP.
    config = make_config(store_url, write_rules(tmp_path / "live-rules", RULES),
                         plugins=["tests.support.plugins"], **{"sinks.console.enabled": False})
    client, daemon = await daemon_client(config)
    assert (await client.post("/webhooks/alertmanager", data=captured)).status == 200
    async with asyncio.timeout(20):
        while not (incidents := await daemon.store.list_incidents()) or incidents[0].processed_at is None:
            await asyncio.sleep(0.05)
    live = [(row["step"], row["title"], row["status"]) for row in await daemon.store.evidence(incidents[0].id)]
    live_actions = [(row["step"], row["outcome"]) for row in await daemon.store.actions(incidents[0].id)]

    # Replay: the same file through the CLI, on a throwaway store.
    config_file = write_setup(tmp_path, f"sqlite:///{tmp_path / 'unused.db'}", action_log)
    result = cli("replay", str(payload), "--config", str(config_file), "--json", action_log=action_log)
    assert result.returncode == 0, result.stderr
    [replayed] = json.loads(result.stdout)
    assert replayed["incident"]["rule"] == incidents[0].rule == "disk"
    assert [(e["step"], e["title"], e["status"]) for e in replayed["evidence"]] == live
    assert [(a["step"], a["outcome"]) for a in replayed["actions"]] == live_actions == [("cleanup", "dry-run")]
    assert not action_log.exists(), "dry-run replay wrote nothing"
    assert not (tmp_path / "unused.db").exists(), "replay did not touch the configured store"

    # Enforcement on a throwaway store would act outside the live kill switch, cooldowns, budgets and
    # audit: refused. With --record it runs on the configured store, under its guards and in its audit.
    refused = cli("replay", str(payload), "--config", str(config_file), "--json", "--enforce", action_log=action_log)
    assert refused.returncode != 0 and "needs the live store's guards" in refused.stderr
    assert not action_log.exists()
    live_store = await open_store(f"sqlite:///{tmp_path / 'unused.db'}")
    try:
        await ActionStore(live_store).set_setting(KILL_SWITCH, {"enabled": True, "reason": "test"}, "test")
    finally:
        await live_store.close()
    stopped = cli("replay", str(payload), "--config", str(config_file), "--json", "--enforce", "--record",
                  action_log=action_log)
    assert stopped.returncode == 0, stopped.stderr
    assert [a["guard"] for a in json.loads(stopped.stdout)[0]["actions"]] == ["kill_switch"], stopped.stdout
    assert not action_log.exists(), "the live store's kill switch stopped the replay"
    audit = cli("actions", "list", "--config", str(config_file), "--json")
    assert [a["guard"] for a in json.loads(audit.stdout)] == ["kill_switch"], audit.stdout
    other = write_setup(tmp_path / "other", f"sqlite:///{tmp_path / 'other.db'}", action_log)
    enforced = cli("replay", str(payload), "--config", str(other), "--json", "--enforce", "--record",
                   action_log=action_log)
    assert enforced.returncode == 0, enforced.stderr
    assert [a["outcome"] for a in json.loads(enforced.stdout)[0]["actions"]] == ["executed"]
    assert action_log.read_text().split() == ["1", "db-1"]

    progress = cli("replay", str(payload), "--config", str(config_file), action_log=action_log)
    assert "disk usage on db-1" in progress.stdout and "(mitigations in dry-run)" in progress.stdout


async def test_explain_match_non_match_and_blocked_mitigation(tmp_path: Path) -> None:
    config = write_setup(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "a.log")
    match = tmp_path / "match.json"
    match.write_text(json.dumps(am_payload(am_alert("DiskFull", labels={"instance": "db-1"}))))
    out = cli("explain", str(match), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "✓ disk matches" in out.stdout
    assert 'collect  usage: test.sleep {"seconds": 0.05, "label": "disk usage on db-1"}' in out.stdout
    assert "mitigate cleanup: test.record" in out.stdout and "dry-run, would run" in out.stdout

    nothing = tmp_path / "none.json"
    nothing.write_text(json.dumps(am_payload(am_alert("Other", labels={"severity": "info"}))))
    out = cli("explain", str(nothing), "--config", str(config))
    assert 'disk: alertname="DiskFull" (label is "Other"); severity=~"critical|page" (label is "info")' in out.stdout
    assert "no rule matches" in out.stdout

    resolved = tmp_path / "resolved.json"
    resolved.write_text(json.dumps(am_payload(am_alert("DiskFull", status="resolved", labels={"instance": "db-1"}))))
    out = cli("explain", str(resolved), "--config", str(config))
    assert "blocked by resolved: the alert is already resolved" in out.stdout
    assert not (tmp_path / "a.log").exists()


def test_test_rules_passes_on_shipped_rules_and_fails_with_a_diff(tmp_path: Path) -> None:
    shipped = cli("test-rules", "rules/tests", "--config", "config.example.yaml")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert " 0 failed" in shipped.stdout

    write_rules(tmp_path / "rules", RULES)
    cases = tmp_path / "rules.test.yaml"
    cases.write_text("""
rule_files: [rules]
tests:
  - name: right
    alert: {labels: {alertname: DiskFull, severity: critical, instance: db-1}}
    expect:
      rules: [disk]
      collectors: [{id: usage, params: {label: "disk usage on db-1"}}]
      mitigations: [{type: test.record, params: {target: db-1}, guard: allowed}]
  - name: deliberately wrong
    alert: {labels: {alertname: DiskFull, severity: critical, instance: db-1}}
    expect:
      rules: [catch-all]
      mitigations: [{type: test.record, params: {target: db-2}}]
""")
    config = tmp_path / "c.yaml"
    config.write_text("plugins: [tests.support.plugins]\n")
    result = cli("test-rules", str(cases), "--config", str(config))
    assert result.returncode == 1
    assert "PASS" in result.stdout and "right" in result.stdout
    assert "FAIL" in result.stdout and "deliberately wrong" in result.stdout
    assert "+- disk" in result.stdout and "-- catch-all" in result.stdout
    assert "target: db-2" in result.stdout and "target: db-1" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


async def test_alerts_export_and_api_replay(tmp_path: Path, store_url: str, daemon_client: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "api-token-123456")
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), plugins=["tests.support.plugins"],
                         **{"server.api_token": {"env": "API_TOKEN"}, "sinks.console.enabled": False})
    client, daemon = await daemon_client(config)
    body = am_payload(am_alert("DiskFull", labels={"instance": "db-9"}))
    assert (await client.post("/webhooks/alertmanager", json=body)).status == 200
    [alert] = await daemon.store.list_alerts()
    assert (await client.post("/api/replay", json={"alert_id": alert["id"]})).status == 401
    auth = {"Authorization": "Bearer api-token-123456"}
    assert (await client.post("/api/replay", json={"alert_id": "x"}, headers=auth)).status == 400
    assert (await client.post("/api/replay", json={"alert_id": 999999}, headers=auth)).status == 404
    for bad in (2**70, -1, 0, True):
        assert (await client.post("/api/replay", json={"alert_id": bad}, headers=auth)).status == 400, bad
    refused = await client.post("/api/replay", json={"alert_id": alert["id"], "enforce": True}, headers=auth)
    assert refused.status == 403 and "never acts" in (await refused.json())["detail"]
    bare = {"Authorization": "api-token-123456"}
    assert (await client.post("/api/replay", json={"alert_id": alert["id"]}, headers=bare)).status == 401
    resp = await client.post("/api/replay", json={"alert_id": alert["id"]}, headers=auth)
    assert resp.status == 200, await resp.text()
    [result] = (await resp.json())["results"]
    assert result["incident"]["rule"] == "disk"
    assert [e["title"] for e in result["evidence"]] == ["disk usage on db-9 0.05s"]
    assert [a["outcome"] for a in result["actions"]] == ["dry-run"]
    assert len(await daemon.store.list_incidents()) == 1, "the live store got no replayed incident"
