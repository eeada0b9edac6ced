"""The Slack sink through the real slack-sdk against the fake Slack API: threads, limits, rate limits,
outages and exactly-once delivery."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import tests.support.plugins  # noqa: F401  (the test.evidence collector)
from responder.sinks.slack import SATURATED_SECONDS
from responder.sinks.slack_blocks import Member, parent_message, thread_messages
from responder.store import Store, open_store
from tests.conftest import make_config, write_rules
from tests.fakes.slack_api import MAX_BLOCKS, MAX_SECTION_TEXT, FakeSlack, Message
from tests.support.alerts import am_alert, am_payload
from tests.support.processes import responder_daemon, wait_http
from tests.support.services import free_port

TOKEN = "xoxb-test-token"
GOLDEN = Path(__file__).parent / "golden" / "slack_thread.json"

RULES = """
rules:
  - name: api-errors
    match: ['alertname="HighErrorRate"']
    collectors:
      - {id: rate, type: test.evidence, params: {kind: series}}
      - {id: pods, type: test.evidence, params: {kind: rows, size: 5}}
      - {id: logs, type: test.evidence, params: {kind: text, size: 20}}
    checklist: ["Check the last deploy", "Page the owning team if it persists"]
"""

LIGHT = """
rules:
  - name: api-errors
    match: ['alertname="HighErrorRate"']
    collectors:
      - {id: logs, type: test.evidence, params: {kind: text, size: 5}}
    checklist: ["Check the last deploy"]
"""

BIG = """
rules:
  - name: big
    match: ['alertname="Big"']
    collectors:
      - {id: logs, type: test.evidence, params: {kind: text, size: 10000}}
      - {id: pods, type: test.evidence, params: {kind: rows, size: 400}}
      - {id: settings, type: test.evidence, params: {kind: fields, size: 30}}
"""


@pytest.fixture
def slack_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_SLACK_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(TOKEN) as fake:
        yield fake


def slack_config(store_url: str, tmp_path: Path, slack: FakeSlack, rules: str = RULES, **overrides: Any) -> Any:
    return make_config(store_url, write_rules(tmp_path / "rules", rules), **{
        "plugins": ["tests.support.plugins"],
        "sinks.console.enabled": False,
        "sinks.slack.token": {"env": "TEST_SLACK_TOKEN"},
        "sinks.slack.api_url": slack.api_url,
        "sinks.slack.default_channel": "#incidents",
        "sinks.slack.rate_per_channel": 50, "sinks.slack.update_rate": 50,
        "sinks.slack.timeout": "2s",
        **overrides,
    })


async def settled(store: Store, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until no job of any queue is queued or running; the Slack rows then."""
    deadline = time.monotonic() + timeout
    while await store.queue.depth() > 0:
        assert time.monotonic() < deadline, f"jobs still pending: {await store.queue.depth()}"
        await asyncio.sleep(0.1)
    return [dict(r) for q in ("sink:slack", "sink:slack:outbox") for r in await store.queue.rows(queue=q)]


def outbox_ids(messages: list[Message]) -> list[int]:
    return [m.metadata["event_payload"]["outbox_id"] for m in messages if m.metadata]


def assert_within_limits(slack: FakeSlack) -> None:
    for call in slack.calls:
        assert call.error != "invalid_blocks", call
        blocks = call.args.get("blocks") or []
        assert len(blocks) <= MAX_BLOCKS
        for block in blocks:
            for text in [block.get("text") or {}, *(block.get("fields") or [])]:
                assert len(text.get("text", "")) <= MAX_SECTION_TEXT


# --- rendering ------------------------------------------------------------------------------------


def sample_event() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    incident = {
        "id": 42, "source": "alertmanager", "alertname": "HighErrorRate", "status": "open", "rule": "api-errors",
        "starts_at": 1_767_225_600.0, "opened_at": 1_767_225_601.0, "resolved_at": None,
        "labels": {"alertname": "HighErrorRate", "severity": "critical", "namespace": "prod", "service": "api",
                   "instance": "10.0.0.7:8080"},
        "annotations": {"summary": "5xx above 5% on api", "description": "Error ratio is 12% for 10 minutes.",
                        "runbook_url": "https://runbooks.example/api-errors"},
        "extra": {"group_key": '{}:{alertname="HighErrorRate"}', "external_url": "http://alertmanager.example:9093",
                  "generator_url": "http://prometheus.example/graph?g0.expr=rate", "receiver": "responder"},
    }
    evidence = [
        {"step": "rate", "collector": "prometheus.range", "title": "error rate", "status": "ok", "duration_ms": 41.0,
         "payload": {"series": [{"metric": {"__name__": "http_errors", "pod": "api-0"},
                                 "values": [[1_767_225_000 + 60 * t, str(t % 5)] for t in range(10)]}]},
         "text": "api-0: last 4", "full_text": None, "truncated": False},
        {"step": "pods", "collector": "kubernetes.pods", "title": "pods", "status": "ok", "duration_ms": 12.0,
         "payload": {"rows": [{"pod": "api-0", "restarts": 7, "status": "CrashLoopBackOff"},
                              {"pod": "api-1", "restarts": 0, "status": "Running"}]},
         "text": "api-0 7\napi-1 0", "full_text": None, "truncated": False},
        {"step": "logs", "collector": "kubernetes.logs", "title": "api logs", "status": "ok", "duration_ms": 88.0,
         "payload": {"lines": 2}, "text": "ERROR upstream timeout\nERROR upstream timeout", "full_text": None,
         "truncated": False},
    ]
    decision = {"step": "restart", "action": "kubernetes.rollout_restart", "target": "kubernetes/prod/deployment/api",
                "mode": "enforce", "outcome": "pending", "description": "rollout restart deployment prod/api",
                "params": {}, "guard": None, "reason": "waiting for approval", "output": {},
                "created_at": 1_767_225_602.0, "finished_at": None, "action_id": 7, "approval_id": 3}
    bundles = [{"rule": "api-errors", "evidence": evidence, "decisions": [decision], "errors": [],
                "checklist": ["Check the last deploy"], "channel": None}]
    return incident, bundles


def test_blocks_of_a_sample_incident_match_the_golden_copy() -> None:
    incident, bundles = sample_event()
    parent = parent_message({"incident": incident, "phase": "awaiting_approval"},
                            [Member("HighErrorRate", "open", incident["labels"])], "S0ONCALL", 20)
    replies = thread_messages(incident, bundles)
    rendered = {"parent": {"text": parent.text, "blocks": parent.blocks},
                "replies": [{"text": m.text, "blocks": m.blocks,
                             "attachments": [a.filename for a in m.attachments]} for m in replies]}
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(rendered, indent=2, ensure_ascii=False) + "\n")
    assert rendered == json.loads(GOLDEN.read_text())
    buttons = replies[-2].blocks[-1]
    assert [(e["action_id"], e["value"]) for e in buttons["elements"]] == [("approve", "3"), ("deny", "3")]


# --- through the daemon -----------------------------------------------------------------------------


async def test_incident_thread_evidence_chart_and_checklist(daemon_client: Any, store_url: str, tmp_path: Path,
                                                            slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await daemon_client(slack_config(store_url, tmp_path, slack))
    assert (await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))).status == 200
    rows = await settled(daemon.store)
    assert {r["status"] for r in rows} == {"done"}
    [parent] = slack.parents("#incidents")
    thread = slack.thread("#incidents", parent.ts)
    assert "Firing: HighErrorRate" in parent.blocks[0]["text"]["text"]
    silence = [b for b in parent.blocks if "Silence" in json.dumps(b)]
    assert silence and "alertmanager.example:9093/#/silences/new?filter=" in json.dumps(silence)
    texts = [m.text for m in thread[1:]]
    assert any("error rate" in t for t in texts) and any("pods" in t for t in texts)
    assert any(t.startswith("Checklist") for t in texts)
    charts = [f for m in thread for f in m.files if f["name"].endswith(".png")]
    assert len(charts) == 1
    assert slack.uploads[charts[0]["id"]]["content"][:8] == b"\x89PNG\r\n\x1a\n"
    assert outbox_ids(thread) == sorted(outbox_ids(thread))
    assert_within_limits(slack)


async def test_oversized_evidence_is_cut_marked_and_attached_in_full(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await daemon_client(slack_config(store_url, tmp_path, slack, BIG))
    await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Big")))
    rows = await settled(daemon.store)
    assert {r["status"] for r in rows} == {"done"}
    assert_within_limits(slack)
    [parent] = slack.parents("#incidents")
    thread = slack.thread("#incidents", parent.ts)
    logs = next(m for m in thread if m.text.startswith("✓ logs"))
    assert "truncated: the full text is attached" in json.dumps(logs.blocks)
    uploads = {f["name"]: slack.uploads[f["id"]]["content"] for m in thread for f in m.files}
    full_logs = next(v for k, v in uploads.items() if "logs" in k)
    assert full_logs.count(b"\n") == 9999 and b"request 9999 failed" in full_logs
    assert any("pods" in k for k in uploads)  # 400 rows: a table of 15 plus the full list attached


async def test_redelivered_alert_then_resolved_is_one_parent_replies_once_and_one_update(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await daemon_client(slack_config(store_url, tmp_path, slack))
    for _ in range(5):
        assert (await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))).status == 200
        await settled(daemon.store)
    resolved = am_alert(status="resolved")
    assert (await client.post("/webhooks/alertmanager", json=am_payload(resolved))).status == 200
    await settled(daemon.store)
    [parent] = slack.parents("#incidents")
    thread = slack.thread("#incidents", parent.ts)
    replies = [m.text for m in thread[1:]]
    assert len(replies) == len(set(replies)) and len(replies) >= 4
    assert len(slack.calls_to("chat.update", ok=True)) == 1
    assert parent.blocks[0]["text"]["text"].startswith("Resolved")
    assert "resolved" in json.dumps(parent.blocks) and parent.edited == 1


async def test_storm_of_200_alerts_in_one_delivery_gets_one_parent(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await daemon_client(slack_config(store_url, tmp_path, slack, "rules: []\n"))
    storm = [am_alert("NodeDown", labels={"instance": f"node-{i}"}) for i in range(200)]
    resp = await client.post("/webhooks/alertmanager", json=am_payload(*storm, group_key='{}:{alertname="NodeDown"}'))
    assert resp.status == 200
    await settled(daemon.store, timeout=90)
    [parent] = slack.parents("#incidents")
    assert len(slack.calls_to("chat.postMessage", ok=True)) == 1
    assert "200 alerts in this group" in json.dumps(parent.blocks)
    assert "and 180 more" in json.dumps(parent.blocks)
    assert_within_limits(slack)


async def test_rate_limit_waits_out_retry_after(daemon_client: Any, store_url: str, tmp_path: Path,
                                                slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await daemon_client(slack_config(store_url, tmp_path, slack, "rules: []\n"))
    slack.fail_next(1, 429, retry_after=2)
    await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))
    await settled(daemon.store)
    posts = slack.calls_to("chat.postMessage")
    assert [c.status for c in posts] == [429, 200]
    assert posts[1].time - posts[0].time >= 2.0
    assert len(slack.parents("#incidents")) == 1
    metrics = (await (await client.get("/metrics")).text())
    assert 'responder_slack_calls_total{method="chat.postMessage",outcome="ratelimited"} 1.0' in metrics


async def test_permanent_error_is_recorded_on_the_incident_and_not_retried(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    config = slack_config(store_url, tmp_path, slack, "rules: []\n", **{"sinks.slack.default_channel": "#nowhere"})
    client, daemon = await daemon_client(config)
    await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))
    rows = await settled(daemon.store)
    assert [(r["kind"], r["status"]) for r in rows if r["kind"].startswith("slack.")] == [
        ("slack.post_parent", "failed")]
    assert len(slack.calls_to("chat.postMessage")) == 1
    [incident] = await daemon.store.list_incidents()
    assert incident.error is not None and "channel_not_found" in incident.error
    metrics = (await (await client.get("/metrics")).text())
    assert 'responder_slack_calls_total{method="chat.postMessage",outcome="permanent"} 1.0' in metrics


async def test_a_reply_slack_took_but_answered_too_late_is_not_posted_again(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    config = slack_config(store_url, tmp_path, slack, **{"sinks.slack.timeout": "1s"})
    client, daemon = await daemon_client(config)
    slack.set_delay(5)  # every call lands, but the answer comes after the sink gave up
    await client.post("/webhooks/alertmanager", json=am_payload(am_alert()))
    await asyncio.sleep(6)
    slack.set_delay(0)
    await settled(daemon.store, timeout=60)
    [parent] = slack.parents("#incidents")
    ids = outbox_ids(slack.thread("#incidents", parent.ts))
    assert len(ids) == len(set(ids))
    assert slack.calls_to("conversations.history") or slack.calls_to("conversations.replies")


async def fire_many(post: Any, n: int) -> None:
    for i in range(n):
        body = am_payload(am_alert("HighErrorRate", labels={"service": f"svc-{i}"}),
                          group_key=f'{{}}:{{service="svc-{i}"}}')
        await post(body)


def assert_exactly_once_in_order(slack: FakeSlack, rows: list[dict[str, Any]], incidents: int) -> None:
    parents = slack.parents("#incidents")
    assert len(parents) == incidents
    posted: list[int] = []
    for parent in parents:
        thread = slack.thread("#incidents", parent.ts)
        ids = outbox_ids(thread)
        assert ids == sorted(ids), "replies out of order"
        posted += ids
    assert len(posted) == len(set(posted)), "a message was posted twice"
    messages = [r["id"] for r in rows if r["kind"] in ("slack.post_parent", "slack.reply")]
    assert sorted(posted) == sorted(messages)
    assert {r["status"] for r in rows} == {"done"}


async def test_outage_delays_but_delivers_every_message_once_in_order(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    # A 10 s outage (the scenario of a longer one, shortened): every call fails with 503 meanwhile.
    config = slack_config(store_url, tmp_path, slack, LIGHT, **{"pipeline.retry_max": "1s", "pipeline.workers": 8,
                                                                "sinks.slack.rate_per_channel": 200})
    client, daemon = await daemon_client(config)
    slack.fail_for(10, 503)

    async def post(body: dict[str, Any]) -> None:
        assert (await client.post("/webhooks/alertmanager", json=body)).status == 200

    await fire_many(post, 50)
    rows = await settled(daemon.store, timeout=120)
    assert any(c.status == 503 for c in slack.calls)
    assert_exactly_once_in_order(slack, rows, 50)


@pytest.mark.slow
async def test_kill9_during_an_outage_then_restart_delivers_exactly_once(tmp_path: Path, slack: FakeSlack) -> None:
    rules = write_rules(tmp_path / "rules", LIGHT)
    db = tmp_path / "responder.db"
    config = {
        "store": {"url": f"sqlite:///{db}", "lease_seconds": "2s", "poll_interval": "100ms"},
        "pipeline": {"workers": 8, "retry_initial": "100ms", "retry_max": "1s"},
        "rules": {"dirs": [str(rules)]},
        "plugins": ["tests.support.plugins"],
        "server": {"drain_seconds": "1s"},
        "sinks": {"console": {"enabled": False},
                  "slack": {"token": {"env": "TEST_SLACK_TOKEN"}, "api_url": slack.api_url, "rate_per_channel": 200,
                            "timeout": "2s"}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {"TEST_SLACK_TOKEN": TOKEN}
    slack.fail_for(3600, 503)
    first = responder_daemon(path, port, tmp_path / "first.log", extra_env=env).start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=first)
        async with aiohttp.ClientSession() as session:
            async def post(body: dict[str, Any]) -> None:
                async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager", json=body) as resp:
                    assert resp.status == 200
            await fire_many(post, 50)
        deadline = time.monotonic() + 30
        while len({c.args.get("channel") for c in slack.calls_to("chat.postMessage")}) == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        first.kill9()
    finally:
        first.stop()
    slack.recover()
    second = responder_daemon(path, port, tmp_path / "second.log", extra_env=env).start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=second)
        store = await open_store(f"sqlite:///{db}")
        try:
            rows = await settled(store, timeout=120)
        finally:
            await store.close()
    finally:
        second.stop()
    assert_exactly_once_in_order(slack, rows, 50)


# --- a saturated channel ------------------------------------------------------------------------------

GROUPED = """
rules:
  - name: crashloop
    match: ['alertname="PodCrashLooping"']
    group_by: [deployment]
    collectors:
      - {id: logs, type: test.evidence, params: {kind: text, size: 1}}
"""
SATURATING_RATE = 8


def crashing(deployment: str, pods: int, status: str = "firing") -> dict[str, Any]:
    return am_payload(*(am_alert("PodCrashLooping", status=status,
                                 labels={"deployment": deployment, "pod": f"{deployment}-{n}"}) for n in range(pods)),
                      group_key=f'{{}}:{{deployment="{deployment}"}}')


async def saturated(tmp_path: Path, store_url: str, daemon_client: Any, slack: FakeSlack) -> tuple[Any, Any]:
    """A daemon whose channel takes SATURATING_RATE messages a second: the `grow` group's thread posted, then
    40 other groups (80 messages, 10 s of them). Outside a storm the parent of `grow` would be edited and its
    members summed up every 0.2 s."""
    slack.rate_limit(SATURATING_RATE)
    config = slack_config(store_url, tmp_path, slack, GROUPED, **{
        "sinks.slack.rate_per_channel": SATURATING_RATE, "pipeline.workers": 8,
        "sinks.slack.min_update_interval": "200ms", "sinks.slack.summary_interval": "200ms"})
    client, daemon = await daemon_client(config)
    assert (await client.post("/webhooks/alertmanager", json=crashing("grow", 1))).status == 200
    async with asyncio.timeout(10):
        while not slack.parents("#incidents"):
            await asyncio.sleep(0.05)
    await more_groups(client, 40)
    return client, daemon


async def more_groups(client: Any, n: int) -> None:
    """`n` groups of one alert each, new ones on every call."""
    for _ in range(n):
        payload = crashing(f"other-{next(OTHERS)}", 1)
        assert (await client.post("/webhooks/alertmanager", json=payload)).status == 200


OTHERS = itertools.count()


def thread_calls(slack: FakeSlack, parent: Message) -> list[Any]:
    """The successful calls that made or edited the thread of `parent`."""
    def ours(call: Any) -> bool:
        if call.method == "chat.update":
            return bool(call.args.get("ts") == parent.ts)
        return bool(call.args.get("thread_ts") == parent.ts
                    or (not call.args.get("thread_ts") and call.args.get("metadata") == parent.metadata))
    return [c for c in slack.calls if c.error is None and ours(c)]


def grow_parent(slack: FakeSlack) -> Message:
    [parent] = [p for p in slack.parents("#incidents") if "grow" in json.dumps(p.blocks)]
    return parent


async def test_a_group_growing_while_its_channel_is_saturated_gets_one_edit_and_one_summary_with_its_final_state(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await saturated(tmp_path, store_url, daemon_client, slack)
    for pods in range(2, 26):
        # For 12 s new groups keep coming as fast as the channel takes their messages, queued behind the
        # edit and the summary of `grow`: those get their turn while the channel is still saturated.
        await asyncio.sleep(0.5)
        await more_groups(client, 2)
        assert (await client.post("/webhooks/alertmanager", json=crashing("grow", pods))).status == 200
    rows = await settled(daemon.store, timeout=90)
    assert {r["status"] for r in rows} == {"done"}
    assert not [c for c in slack.calls if c.status == 429]
    parent = grow_parent(slack)
    calls = thread_calls(slack, parent)
    # The parent, the evidence, then once the channel drained one edit and one summary.
    assert [c.method for c in calls] == ["chat.postMessage", "chat.postMessage", "chat.update", "chat.postMessage"]
    assert "*25 alerts in this group* (25 firing, 0 resolved)" in json.dumps(parent.blocks)
    assert slack.thread("#incidents", parent.ts)[-1].text == ":busts_in_silhouette: +24 alerts · now 25 firing of 25"
    # Not before the channel's backlog was down to what it sends in SATURATED_SECONDS.
    later = [c for c in slack.calls_to("chat.postMessage", ok=True) if c not in calls and c.time > calls[2].time]
    assert len(later) <= SATURATED_SECONDS * SATURATING_RATE


async def test_a_group_resolving_while_its_channel_is_saturated_gets_its_parent_resolved_and_one_reply(
        daemon_client: Any, store_url: str, tmp_path: Path, slack: FakeSlack, slack_token: str) -> None:
    client, daemon = await saturated(tmp_path, store_url, daemon_client, slack)
    assert (await client.post("/webhooks/alertmanager", json=crashing("grow", 1, "resolved"))).status == 200
    rows = await settled(daemon.store, timeout=90)
    assert {r["status"] for r in rows} == {"done"}
    parent = grow_parent(slack)
    assert parent.blocks[0]["text"]["text"].startswith("Resolved") and parent.edited == 1
    replies = [m.text for m in slack.thread("#incidents", parent.ts)[1:]]
    assert sum(1 for t in replies if t.startswith(":white_check_mark: Resolved")) == 1
