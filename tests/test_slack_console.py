"""The incident console through the real slack-sdk against the Slack fake: acknowledge, re-run diagnostics,
who may press what (user ids and user groups), outcomes of approvals and mitigations in the thread, and
presses done once however often they arrive."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tests.support.plugins  # noqa: F401  (the test.evidence and test.sleep collectors)
from responder.cli import main as cli_main
from responder.jobs import CLICK, CONSOLE_QUEUE, ClickRef
from tests.conftest import make_config, write_rules
from tests.fakes.slack_api import FakeSlack, Message
from tests.support.admin import admin_endpoint
from tests.support.alerts import am_alert, am_payload
from tests.support.slack_clicks import SECRET, click, handled
from tests.test_mitigations_guard import alerts as api_alerts
from tests.test_mitigations_guard import post_burst, wait_processed
from tests.test_slack import LIGHT, TOKEN, settled, slack_config


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SLACK_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("APP_ADMIN_TOKEN", "Bearer admin-secret")
    monkeypatch.delenv("RESPONDER_KILL_SWITCH", raising=False)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(TOKEN) as fake:
        yield fake


SIGNING = {"mitigations.approvals.slack_signing_secret": {"env": "SLACK_SIGNING_SECRET"},
           "sinks.slack.mentions": {"critical": "S0ONCALL"}}


def thread_of(slack: FakeSlack) -> tuple[Message, list[Message]]:
    [parent] = slack.parents("#incidents")
    return parent, slack.thread("#incidents", parent.ts)[1:]


def buttons(message: Message) -> list[str]:
    return [e["action_id"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]


def told(slack: FakeSlack, user: str) -> list[str]:
    return [m["text"] for m in slack.ephemeral if m["user"] == user]


async def answered(slack: FakeSlack, user: str, count: int) -> list[str]:
    """The ephemeral answers `user` got, once there are `count` (they are sent after the press is recorded)."""
    async with asyncio.timeout(10):
        while len(told(slack, user)) < count:
            await asyncio.sleep(0.05)
    return told(slack, user)


async def incident_id(daemon: Any) -> int:
    [incident] = await daemon.store.list_incidents()
    return incident.id


async def test_acknowledge_and_rerun_from_the_thread(daemon_client: Any, store_url: str, tmp_path: Path,
                                                     slack: FakeSlack) -> None:
    config = slack_config(store_url, tmp_path, slack, LIGHT, **SIGNING, **{"sinks.slack.rerun_min_interval": "1h"})
    client, daemon = await daemon_client(config)
    assert (await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))).status == 200
    await settled(daemon.store)
    incident = await incident_id(daemon)
    parent, replies = thread_of(slack)
    assert buttons(parent) == ["acknowledge", "rerun"]  # no Alertmanager target: no silence buttons
    assert "<!subteam^S0ONCALL>" in json.dumps(parent.blocks)

    # A double click: two presses, one acknowledgement.
    first, second = await asyncio.gather(click(client, "acknowledge", incident),
                                         click(client, "acknowledge", incident, user="U456", username="bob"))
    outcomes = sorted([(await handled(daemon, first["click_id"]))["outcome"],
                       (await handled(daemon, second["click_id"]))["outcome"]])
    assert outcomes == ["done", "unchanged"]
    await settled(daemon.store)
    parent, replies = thread_of(slack)
    shown = json.dumps(parent.blocks)
    assert "Acknowledged by <@U" in shown and "subteam^S0ONCALL" not in shown and "subteam" not in parent.text
    assert buttons(parent) == ["rerun"]
    assert sum("Acknowledged" in m.text for m in replies) == 1
    await asyncio.sleep(0.5)
    assert any("Already acknowledged by <@U" in t for t in told(slack, "U123") + told(slack, "U456"))
    # The press's job run again (a worker that died after recording it): nothing happens twice.
    async with daemon.store.db.transaction() as conn:
        await daemon.store.queue.enqueue(conn, CLICK.new(f"console:incident:{incident}",
                                                         ClickRef(click_id=first["click_id"]), incident_id=incident))
    daemon.wake(CONSOLE_QUEUE)
    await settled(daemon.store)
    _, replies = thread_of(slack)
    assert sum("Acknowledged" in m.text for m in replies) == 1
    assert (await handled(daemon, first["click_id"]))["outcome"] in ("done", "unchanged")

    before = len(await daemon.store.evidence(incident))
    rerun = await click(client, "rerun", incident)
    assert (await handled(daemon, rerun["click_id"]))["outcome"] == "done"
    await settled(daemon.store)
    _, replies = thread_of(slack)
    texts = [m.text for m in replies]
    assert any(t.startswith("Diagnostics re-run: 1 result(s)") for t in texts)
    assert texts.index(next(t for t in texts if t.startswith("Diagnostics re-run"))) < len(texts) - 1
    assert texts[-1].startswith("✓ logs")  # the new evidence follows the note
    assert len(await daemon.store.evidence(incident)) == 2 * before
    assert any("Re-running diagnostics" in t for t in await answered(slack, "U123", 1))

    # Within rerun_min_interval: politely refused, nothing runs.
    again = await click(client, "rerun", incident, user="U456", username="bob")
    row = await handled(daemon, again["click_id"])
    assert row["outcome"] == "declined"
    await settled(daemon.store)
    assert len(await daemon.store.evidence(incident)) == 2 * before
    [answer] = [t for t in await answered(slack, "U456", 1) if "re-run" in t]
    assert "re-run" in answer and "by <@U123>" in answer and "Try again in" in answer


async def test_permissions_by_user_and_user_group_refusals_are_audited(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack,
        capsys: pytest.CaptureFixture[str]) -> None:
    slack.usergroups["S0SRE"] = ["U555", "U556"]
    config = slack_config(store_url, tmp_path, slack, LIGHT, **SIGNING, **{
        "sinks.slack.permissions": {"acknowledge": ["S0SRE"], "rerun": ["U777"]}})
    client, daemon = await daemon_client(config)
    await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))
    await settled(daemon.store)
    incident = await incident_id(daemon)

    outsider = [await click(client, "acknowledge", incident, user="U123", username="mallory") for _ in range(2)]
    member = await click(client, "acknowledge", incident, user="U555", username="sre")
    rerun = await click(client, "rerun", incident, user="U555", username="sre")
    rows = [await handled(daemon, c["click_id"]) for c in [*outsider, member, rerun]]
    assert [(r["user_id"], r["button"], r["outcome"]) for r in rows] == [
        ("U123", "acknowledge", "refused"), ("U123", "acknowledge", "refused"), ("U555", "acknowledge", "done"),
        ("U555", "rerun", "refused")]
    assert rows[0]["detail"] == "not listed in sinks.slack.permissions.acknowledge"
    assert "You may not press *Acknowledge*" in (await answered(slack, "U123", 2))[0]
    assert "You may not press *Re-run diagnostics*" in (await answered(slack, "U555", 1))[-1]
    metrics = await (await client.get("/metrics")).text()
    assert 'responder_slack_clicks_total{button="acknowledge",outcome="refused"} 2.0' in metrics
    # Group members are learnt once and cached.
    assert len(slack.calls_to("usergroups.users.list", ok=True)) == 1
    await settled(daemon.store)
    parent, _ = thread_of(slack)
    assert "Acknowledged by <@U555>" in json.dumps(parent.blocks)
    # The audit, as `responder clicks list` shows it.
    assert await asyncio.to_thread(cli_main, ["clicks", "list", "--store", store_url, "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert [(r["user_id"], r["user_name"], r["button"], r["outcome"]) for r in audit][:2] == [
        ("U555", "sre", "rerun", "refused"), ("U555", "sre", "acknowledge", "done")]
    assert audit[-1]["detail"] == "not listed in sinks.slack.permissions.acknowledge"


APPROVAL_RULES = """
rules:
  - name: api-down
    match: ['alertname="ApiDown"']
    group_by: [deployment]
    slack: {escalation: S0ESCALATE}
    collectors:
      - {id: probe, type: test.sleep, params: {seconds: 0.01, label: probed}}
    mitigations:
      - id: fallback
        type: http.request
        mode: enforce
        requires_approval: true
        params: {target: app, path: "/admin/fallback/{{ labels.deployment }}"}
        verify:
          after: 300ms
          collector: probe
          when: ["evidence.probe.payload.seconds > 5"]
"""


async def test_outcomes_of_approve_deny_expire_and_verify_are_told_in_the_thread(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack) -> None:
    async with admin_endpoint() as endpoint:
        config = make_config(store_url, write_rules(tmp_path / "rules", APPROVAL_RULES), **{
            "plugins": ["tests.support.plugins"], "sinks.console.enabled": False,
            "sinks.slack.token": {"env": "TEST_SLACK_TOKEN"}, "sinks.slack.api_url": slack.api_url,
            "sinks.slack.rate_per_channel": 50, "sinks.slack.update_rate": 50, "sinks.slack.timeout": "2s",
            "sinks.slack.permissions": {"approve": ["U123"]},
            "targets": {"http": {"app": {"url": endpoint.url,
                                         "headers": {"Authorization": {"env": "APP_ADMIN_TOKEN"}}}}},
            "mitigations.mode": "enforce", "mitigations.approvals.timeout": "4s",
            "mitigations.approvals.slack_signing_secret": {"env": "SLACK_SIGNING_SECRET"}})
        client, daemon = await daemon_client(config)
        await post_burst(client, [*api_alerts(1, "api"), *api_alerts(1, "web"), *api_alerts(1, "db")], per_request=1)
        await wait_processed(daemon, 3)  # not `settled`: that would wait for the approvals to expire
        async with daemon.store.db.read() as conn:
            rows = await conn.fetch("SELECT p.id, p.incident_id, i.labels FROM approvals p"
                                    " JOIN incidents i ON i.id = p.incident_id")
        approvals = {json.loads(r["labels"])["deployment"]: (int(r["id"]), int(r["incident_id"])) for r in rows}
        approved = await click(client, "approve", approvals["api"][0])
        denied = await click(client, "deny", approvals["web"][0])
        assert (await handled(daemon, approved["click_id"]))["outcome"] == "done"
        assert (await handled(daemon, denied["click_id"]))["outcome"] == "done"
        await asyncio.sleep(5)  # the db approval expires; the api action runs and is verified
        await settled(daemon.store)
        assert [c["path"] for c in endpoint.calls] == ["/admin/fallback/api"]

    threads = {}
    for parent in slack.parents("#incidents"):
        labels = json.dumps(parent.blocks)
        name = next(d for d in ("api", "web", "db") if f"Deployment*\\n{d}" in labels)
        threads[name] = (parent, [m.text for m in slack.thread("#incidents", parent.ts)[1:]])
    api_parent, api_replies = threads["api"]
    assert any(t.startswith("http.request approved") for t in api_replies)
    assert any(t.startswith("http.request on") and t.endswith(": executed") for t in api_replies)
    not_recovered = next(t for t in api_replies if t.startswith("Not recovered after http.request"))
    assert not_recovered.endswith("<!subteam^S0ESCALATE>")
    assert api_replies[-1].startswith("✓ probe")  # the verifying evidence
    assert "Not recovered after http.request" in json.dumps(api_parent.blocks)
    web_parent, web_replies = threads["web"]
    assert any(t.startswith("http.request denied") for t in web_replies)
    assert web_parent.blocks[0]["text"]["text"].startswith("Firing")
    db_parent, db_replies = threads["db"]
    assert any(t.startswith("http.request expired: nobody answered in time") for t in db_replies)
    assert "expired" in json.dumps(db_parent.blocks)


def check(tmp_path: Path, config: str) -> tuple[int, str]:
    (tmp_path / "rules").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(f"rules: {{dirs: [{tmp_path / 'rules'}]}}\n" + config)
    result = subprocess.run([sys.executable, "-m", "responder", "check", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_check_refuses_unknown_action_kinds_and_malformed_ids(tmp_path: Path) -> None:
    code, output = check(tmp_path, "sinks: {slack: {permissions: {aprove: [U0123ABCD], rerun: [U0123ABCD]}}}\n")
    assert code == 1
    assert "config.yaml" in output and "sinks.slack.permissions: unknown action kind(s) 'aprove'" in output
    assert "(known: approve, silence, acknowledge, rerun)" in output
    code, output = check(tmp_path, "sinks: {slack: {permissions: {approve: [S0SRE, alice], silence: ['#sre']}}}\n")
    assert code == 1
    assert "sinks.slack.permissions.approve.1: 'alice' is neither a Slack user id" in output
    assert "sinks.slack.permissions.silence.0: '#sre' is neither" in output
    code, output = check(tmp_path, "sinks: {slack: {permissions: {approve: [S0SRE, U0123ABCD], silence: []}}}\n"
                                   "targets: {alertmanager: {main: {url: 'http://127.0.0.1:9093'}}}\n"
                                   "intakes: {alertmanager: {alertmanager: other, auth: {unauthenticated: any}}}\n")
    assert code == 1
    assert "intakes.alertmanager.alertmanager: no alertmanager target named 'other'" in output
