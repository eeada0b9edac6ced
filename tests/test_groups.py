"""Incidents are alert groups, through the real daemon and store (and Slack through the real client
against the fake): a growing group delivered to two replicas is one incident gathered once in one
thread; members resolve one by one and the parent follows; rules split or merge groups; identical
collector calls of two incidents are made once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from responder.models import Alert, AlertStatus, Delivery, Incident
from responder.store import open_store
from responder.store.db import open_database
from responder.store.migrations import migrate
from responder.store.slack_threads import SlackThreads
from tests.conftest import make_config, write_rules
from tests.fakes.slack_api import FakeSlack
from tests.support.admin import AdminEndpoint, admin_endpoint
from tests.support.alerts import am_alert, am_payload
from tests.support.vendors import pd_event
from tests.test_intake_vendors import post_pd
from tests.test_slack import TOKEN, slack_config

GROUPED = """
rules:
  - name: crashloop
    match: ['alertname="PodCrashLooping"']
    group_by: [namespace, deployment]
    group_wait: {wait}
    collectors:
      - id: deployment
        type: http.check
        params: {{target: app, path: "/deployments/{{{{ labels.deployment }}}}"}}
      - id: pod-logs
        type: http.check
        for_each: alerts
        max_members: 3
        params: {{target: app, path: "/pods/{{{{ labels.pod }}}}/logs"}}
    mitigations:
      - id: restart
        type: http.request
        for_each: alerts
        params: {{target: app, path: "/restart/{{{{ labels.deployment }}}}"}}
"""


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSlack]:
    monkeypatch.setenv("TEST_SLACK_TOKEN", TOKEN)
    async with FakeSlack(TOKEN) as fake:
        yield fake


def pod(n: int, status: str = "firing", deployment: str = "api") -> dict[str, Any]:
    return am_alert("PodCrashLooping", status=status, labels={"deployment": deployment, "pod": f"{deployment}-{n}"})


async def settled(daemon: Any, timeout: float = 20) -> list[Incident]:
    """Incidents once every one is processed and no pipeline or sink job is left."""
    async with asyncio.timeout(timeout):
        while True:
            incidents = await daemon.store.list_incidents()
            if incidents and all(i.processed_at for i in incidents) and not await daemon.store.queue.depth():
                return incidents
            await asyncio.sleep(0.05)


def config_for(tmp_path: Path, store_url: str, endpoint: AdminEndpoint, rules: str, *, slack: FakeSlack | None = None,
               **overrides: Any) -> Any:
    settings = {"targets.http": {"app": {"url": endpoint.url}}, "sinks.console.enabled": False,
                "mitigations.mode": "enforce", "mitigations.cooldown": 0, **overrides}
    if slack is not None:
        return slack_config(store_url, tmp_path, slack, rules, **{
            "sinks.slack.min_update_interval": "100ms", "sinks.slack.summary_interval": "100ms", **settings})
    return make_config(store_url, write_rules(tmp_path / "rules", rules), **settings)


def parent_text(slack: FakeSlack) -> str:
    [parent] = slack.parents("#incidents")
    return json.dumps(parent.blocks)


def replies(slack: FakeSlack) -> list[str]:
    [parent] = slack.parents("#incidents")
    return [m.text for m in slack.thread("#incidents", parent.ts)[1:]]


async def test_a_growing_group_delivered_to_two_replicas_is_one_incident_gathered_once(
        tmp_path: Path, pg_url: str, daemon_client: Any, slack: FakeSlack) -> None:
    async with admin_endpoint() as endpoint:
        config = config_for(tmp_path, pg_url, endpoint, GROUPED.format(wait="1s"), slack=slack)
        replicas = [await daemon_client(config), await daemon_client(config)]
        # Alertmanager HA: both instances notify, each re-sends the group with its growing alert list.
        for size in (3, 6, 10):
            payload = am_payload(*(pod(n) for n in range(size)))
            answers = await asyncio.gather(*(c.post("/webhooks/alertmanager", json=payload) for c, _ in replicas))
            assert [a.status for a in answers] == [200, 200]
        [incident] = await settled(replicas[0][1])
    assert (incident.rule, incident.group_key) == ("crashloop", "namespace=prod,deployment=api")
    assert (incident.members_firing, incident.members_total) == (10, 10)
    assert incident.labels["deployment"] == "api" and "pod" not in incident.labels
    paths = sorted(c["path"] for c in endpoint.calls)
    # The deployment once, the logs of the first three pods (max_members), one restart for the deployment.
    assert paths == ["/deployments/api", "/pods/api-0/logs", "/pods/api-1/logs", "/pods/api-2/logs",
                     "/restart/api"]
    actions = await replicas[0][1].store.actions(incident.id)
    assert [(a["action"], a["target"], a["outcome"]) for a in actions] == [
        ("http.request", "http/app/restart/api", "executed")]
    assert len(slack.parents("#incidents")) == 1
    assert "10 alerts in this group" in parent_text(slack)
    assert "http.request on http/app/restart/api: executed" in parent_text(slack)


async def test_members_joining_and_resolving_keep_the_parent_current_until_the_last_resolves(
        tmp_path: Path, store_url: str, daemon_client: Any, slack: FakeSlack) -> None:
    async with admin_endpoint() as endpoint:
        config = config_for(tmp_path, store_url, endpoint, GROUPED.format(wait=0), slack=slack)
        client, daemon = await daemon_client(config)
        await client.post("/webhooks/alertmanager", json=am_payload(*(pod(n) for n in range(2))))
        await settled(daemon)
        assert "2 alerts in this group* (2 firing, 0 resolved)" in parent_text(slack)
        await client.post("/webhooks/alertmanager", json=am_payload(*(pod(n) for n in range(3))))
        await settled(daemon)
        shown, counts = [parent_text(slack)], []
        for resolved in range(1, 4):
            alerts = [pod(n, "resolved" if n < resolved else "firing") for n in range(3)]
            answer = await (await client.post("/webhooks/alertmanager", json=am_payload(*alerts))).json()
            [incident] = await daemon.store.list_incidents()
            counts.append((incident.members_firing, incident.status.value, answer["incidents_resolved"]))
            await settled(daemon)
            shown.append(parent_text(slack))
        assert counts == [(2, "open", 0), (1, "open", 0), (0, "resolved", 1)]
        kinds = [j["kind"] for j in await daemon.store.queue.rows(queue="pipeline")]
        assert kinds == ["process", "members", "members", "members", "resolve"]
    assert [f"({f} firing, {3 - f} resolved)" in text for f, text in zip((3, 2, 1), shown, strict=False)] == [True] * 3
    assert shown[-1].startswith('[{"type": "header", "text": {"type": "plain_text", "text": "Resolved')
    thread = replies(slack)
    assert ":busts_in_silhouette: +1 alert · now 3 firing of 3" in thread
    assert ":busts_in_silhouette: 1 resolved · now 2 firing of 3" in thread
    assert thread[-1].startswith(":white_check_mark: Resolved: all 3 alerts resolved")
    assert sum(1 for t in thread if t.startswith(":white_check_mark: Resolved")) == 1


async def test_a_group_matching_two_rules_is_two_incidents_and_every_label_is_one_per_alert(
        tmp_path: Path, store_url: str, daemon_client: Any) -> None:
    rules = """
rules:
  - name: crashloop
    match: ['alertname="PodCrashLooping"']
    continue: true
  - name: critical-per-alert
    match: ['severity="critical"']
    group_by: ['...']
"""
    async with admin_endpoint() as endpoint:
        client, daemon = await daemon_client(config_for(tmp_path, store_url, endpoint, rules))
        answer = await client.post("/webhooks/alertmanager", json=am_payload(*(pod(n) for n in range(3))))
        assert (await answer.json())["incidents_opened"] == 4
        incidents = await settled(daemon)
    by_rule: dict[str, list[int]] = {}
    for incident in incidents:
        by_rule.setdefault(str(incident.rule), []).append(incident.members_total)
    # The sender's group for the first rule, one incident per alert for `group_by: ['...']`.
    assert by_rule == {"crashloop": [3], "critical-per-alert": [1, 1, 1]}


async def test_pagerduty_events_of_one_incident_are_one_incident(
        tmp_path: Path, store_url: str, daemon_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_SECRET", "pagerduty-secret")
    async with admin_endpoint() as endpoint:
        config = config_for(tmp_path, store_url, endpoint, "rules: []\n",
                            intakes={"pagerduty": {"auth": {"signing_secrets": [{"env": "PD_SECRET"}]}}})
        client, daemon = await daemon_client(config)
        for kind in ("incident.triggered", "incident.acknowledged", "incident.resolved"):
            response = await post_pd(client, pd_event(kind), "pagerduty-secret")
            assert response.status == 200, await response.text()
        [incident] = await settled(daemon)
    assert (incident.fingerprint, incident.status.value, incident.members_total) == ("pd:Q1ABCDEF", "resolved", 1)


async def test_identical_collector_calls_of_two_incidents_are_made_once(
        tmp_path: Path, store_url: str, daemon_client: Any) -> None:
    rules = """
rules:
  - name: api-health
    match: ['alertname="PodCrashLooping"']
    group_by: [deployment]
    collectors:
      - {id: gateway, type: http.check, params: {target: app, path: /gateway/health}}
"""
    async with admin_endpoint(delay=0.3) as endpoint:
        client, daemon = await daemon_client(config_for(tmp_path, store_url, endpoint, rules))
        await asyncio.gather(*(client.post("/webhooks/alertmanager", json=am_payload(pod(0, deployment=d)))
                               for d in ("api", "web")))
        incidents = await settled(daemon)
        assert len(incidents) == 2
        assert [c["path"] for c in endpoint.calls] == ["/gateway/health"]
        shared = [[bool(e["shared"]) for e in await daemon.store.evidence(i.id)] for i in incidents]
        assert sorted(shared) == [[False], [True]]


async def test_refresh_gathers_again_when_members_join_and_not_more_often(
        tmp_path: Path, store_url: str, daemon_client: Any) -> None:
    rules = """
rules:
  - name: crashloop
    match: ['alertname="PodCrashLooping"']
    group_by: [deployment]
    refresh: {on: new_members, min_interval: 1s}
    collectors:
      - {id: deployment, type: http.check, params: {target: app, path: "/deployments/{{ labels.deployment }}"}}
"""
    async with admin_endpoint() as endpoint:
        client, daemon = await daemon_client(config_for(tmp_path, store_url, endpoint, rules,
                                                        **{"collectors.cache_ttl": 0}))
        await client.post("/webhooks/alertmanager", json=am_payload(pod(0)))
        [incident] = await settled(daemon)
        # Two deliveries with new members in quick succession: one refresh, a second after them.
        await client.post("/webhooks/alertmanager", json=am_payload(pod(0), pod(1)))
        await client.post("/webhooks/alertmanager", json=am_payload(pod(0), pod(1), pod(2)))
        await asyncio.sleep(0.2)
        await settled(daemon)
        # A re-send with no new member refreshes nothing.
        await client.post("/webhooks/alertmanager", json=am_payload(pod(0), pod(1), pod(2)))
        await asyncio.sleep(1.5)
        await settled(daemon)
        jobs = await daemon.store.queue.rows(incident_id=incident.id)
        evidence = await daemon.store.evidence(incident.id)
    [first] = [j for j in jobs if j["kind"] == "process"]
    refreshes = [j for j in jobs if j["kind"] == "refresh"]
    # The refresh waits for min_interval after the first evidence, however quickly the members arrived.
    assert len(refreshes) == 1 and refreshes[0]["finished_at"] - first["finished_at"] >= 0.95
    assert [c["path"] for c in endpoint.calls] == ["/deployments/api"] * 2
    assert len(evidence) == 2


async def test_a_store_of_the_previous_release_opens_and_its_open_incident_keeps_its_thread(
        store_url: str) -> None:
    db = await open_database(store_url)
    try:
        assert await migrate(db, upto=4) == 4  # the schema the previous release ran on
        async with db.transaction() as conn:
            payload = await conn.fetchval("INSERT INTO payloads (source, received_at, headers, body)"
                                          " VALUES ('alertmanager', 1, '{}', $1) RETURNING id", b"{}")
            incident = await conn.fetchval(
                "INSERT INTO incidents (source, fingerprint, starts_at, alertname, status, rule, opened_at, last_seen,"
                " labels, annotations, extra, last_alert_id) VALUES ('alertmanager', 'old-fp', 100, 'PodDown', 'open',"
                " 'pods', 1, 1, '{\"alertname\": \"PodDown\"}', '{}', '{}', 0) RETURNING id")
            await conn.execute("INSERT INTO alerts (payload_id, incident_id, source, fingerprint, status, alertname,"
                               " starts_at, labels, annotations, extra, received_at) VALUES ($1, $2, 'alertmanager',"
                               " 'old-fp', 'firing', 'PodDown', 100, '{}', '{}', '{}', 1)", payload, incident)
            thread = await conn.fetchval(
                "INSERT INTO slack_threads (thread_key, channel, channel_id, ts, lead_incident_id, parent_queued,"
                " created_at, updated_at) VALUES ('incident:1', '#incidents', 'C0INCIDENTS', '1.000001', $1, 1, 1, 1)"
                " RETURNING id", incident)
            await conn.execute("INSERT INTO slack_thread_incidents (incident_id, thread_id, role, joined_at)"
                               " VALUES ($1, $2, 'lead', 1)", incident, thread)
    finally:
        await db.close()
    store = await open_store(store_url)
    try:
        [old] = await store.list_incidents()
        assert (old.status.value, old.members_firing, old.members_total) == ("open", 1, 1)
        # Its alert resolves in a group the old release never knew: the incident it belongs to resolves.
        resolved = Alert("alertmanager", AlertStatus.RESOLVED, "old-fp", 100.0, {"alertname": "PodDown"},
                         group_key="{}:{alertname=\"PodDown\"}")
        receipt = await store.record_delivery(Delivery("alertmanager", b"{}", [resolved]))
        assert receipt.resolved == 1 and len(await store.list_incidents()) == 1
        assigned, role = await SlackThreads(store).assign(old, "#incidents", 86400)
        assert (assigned.id, assigned.ts, role) == (thread, "1.000001", "lead")
    finally:
        await store.close()


# One call naming every firing pod of the group: an HTTP path and a PromQL regex.
POD_LISTS = """
rules:
  - name: crashloop
    match: ['alertname="PodCrashLooping"']
    group_by: [namespace, deployment]
    group_wait: 1s
    collectors:
      - id: logs
        type: http.check
        params: {target: app, path: '/logs?pods={{ alerts.labels.pod | join(",") }}'}
      - id: cpu
        type: prometheus.query
        params:
          target: main
          query: >-
            sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="{{ labels.namespace | promql }}",
            pod=~"{{ alerts.labels.pod | regex_escape | join("|") | promql }}"}[5m]))
"""


async def test_one_call_over_the_pods_of_a_group_names_each_firing_pod_once(
        tmp_path: Path, store_url: str, daemon_client: Any) -> None:
    async with admin_endpoint() as endpoint:
        config = config_for(tmp_path, store_url, endpoint, POD_LISTS,
                            **{"targets.prometheus": {"main": {"url": endpoint.url}}})
        client, daemon = await daemon_client(config)
        # Within group_wait: a pod fires and resolves; three pods fire, one of them in two alerts; one alert is
        # about the deployment itself.
        assert (await client.post("/webhooks/alertmanager", json=am_payload(pod(3)))).status == 200
        alerts = [pod(0), pod(1), am_alert("PodCrashLooping", labels={"deployment": "api", "pod": "api-0",
                                                                       "container": "sidecar"}),
                  am_alert("PodCrashLooping", labels={"deployment": "api"}), pod(2), pod(3, "resolved")]
        assert (await client.post("/webhooks/alertmanager", json=am_payload(*alerts))).status == 200
        [incident] = await settled(daemon)
    assert (incident.members_firing, incident.members_total) == (5, 6)
    calls = {c["path"].partition("?")[0]: c for c in endpoint.calls}
    assert len(endpoint.calls) == 2
    # In the order the members joined (within one delivery: by fingerprint), each firing pod once.
    raw, _, pods = calls["/logs"]["raw_path"].partition("=")
    assert raw == "/logs?pods" and sorted(pods.split("%2C")) == ["api-0", "api-1", "api-2"]
    [query] = parse_qs(calls["/api/v1/query"]["body"])["query"]
    start, _, regex = query.partition(' pod=~"')
    assert start == 'sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="prod",'
    assert regex.endswith('"}[5m]))')
    assert regex.removesuffix('"}[5m]))').split("|") == [p.replace("-", "\\\\-") for p in pods.split("%2C")]
