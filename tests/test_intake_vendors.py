"""PagerDuty V3 and Grafana intakes through the real HTTP app, on both stores."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config, write_rules
from tests.support.vendors import dumps, grafana_payload, grafana_signature, pd_event, pd_signature

RULES = """
rules:
  - name: pd-high-urgency
    sources: [pagerduty]
    match: ['urgency="high"']
  - name: grafana-cpu
    sources: [grafana]
    match: ['alertname="HighCPU"']
"""


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PD_SECRET_OLD", "old-pagerduty-secret")
    monkeypatch.setenv("PD_SECRET_NEW", "new-pagerduty-secret")
    monkeypatch.setenv("GRAFANA_HMAC", "grafana-hmac-secret")
    monkeypatch.setenv("GRAFANA_TOKEN", "grafana-bearer-token")


async def start(daemon_client: Any, store_url: str, tmp_path: Path, grafana_options: dict[str, Any] | None = None
                ) -> Any:
    intakes = {
        "pagerduty": {"auth": {"signing_secrets": [{"env": "PD_SECRET_NEW"}, {"env": "PD_SECRET_OLD"}]}},
        "grafana": {"auth": {"bearer_token": {"env": "GRAFANA_TOKEN"}, "signing_secrets": [{"env": "GRAFANA_HMAC"}]},
                    "options": grafana_options or {}},
    }
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), intakes=intakes)
    return await daemon_client(config)


async def stored_payloads(daemon: Any) -> int:
    async with daemon.store.db.read() as conn:
        return int(await conn.fetchval("SELECT COUNT(*) FROM payloads"))


async def post_pd(client: Any, event: dict[str, Any], *secrets: str, tamper: bool = False,
                  webhook_id: str | None = None) -> Any:
    body = dumps(event)
    headers = {"Content-Type": "application/json", "X-Webhook-Id": webhook_id or event["event"]["id"]}
    if secrets:
        headers["X-PagerDuty-Signature"] = pd_signature(body, *secrets)
    return await client.post("/webhooks/pagerduty", data=body + (b" " if tamper else b""), headers=headers)


async def test_pagerduty_signatures(daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    refused = [
        await post_pd(client, pd_event(), "new-pagerduty-secret", tamper=True),
        await post_pd(client, pd_event(), "wrong-secret"),
        await post_pd(client, pd_event()),  # no header at all
    ]
    assert [r.status for r in refused] == [401, 401, 401]
    assert await stored_payloads(daemon) == 0

    accepted = [
        await post_pd(client, pd_event(), "new-pagerduty-secret"),
        await post_pd(client, pd_event(), "old-pagerduty-secret"),           # rotated secret still accepted
        await post_pd(client, pd_event(), "wrong-secret", "new-pagerduty-secret"),  # one of two is valid
    ]
    assert [r.status for r in accepted] == [200, 200, 200]
    assert await stored_payloads(daemon) == 3


async def test_pagerduty_trigger_then_resolve_is_one_incident(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    trigger = pd_event("incident.triggered", event_id="ev-1")
    assert (await post_pd(client, trigger, "new-pagerduty-secret")).status == 200
    again = await post_pd(client, trigger, "new-pagerduty-secret")  # PagerDuty delivered it twice
    assert (await again.json())["status"] == "duplicate"
    ack = pd_event("incident.acknowledged")
    assert (await (await post_pd(client, ack, "new-pagerduty-secret")).json())["incidents_opened"] == 0
    resolve = pd_event("incident.resolved")
    answer = await (await post_pd(client, resolve, "new-pagerduty-secret")).json()
    assert answer["incidents_resolved"] == 1
    [incident] = await daemon.store.list_incidents()
    assert incident.fingerprint == "pd:Q1ABCDEF" and incident.status.value == "resolved"
    assert incident.labels["service"] == "checkout-api" and incident.labels["urgency"] == "high"
    assert incident.labels["priority"] == "P1"
    assert await stored_payloads(daemon) == 3


async def test_pagerduty_resolve_after_reopen_closes_the_reopened_incident(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    created = "2026-11-23T07:59:00Z"
    timeline = [("incident.triggered", "2026-11-23T08:00:00Z", 1, 0),
                ("incident.resolved", "2026-11-23T08:10:00Z", 0, 1),
                ("incident.acknowledged", "2026-11-23T08:11:00Z", 0, 0),  # late: must not reopen anything
                ("incident.reopened", "2026-11-23T08:20:00Z", 1, 0),
                ("incident.escalated", "2026-11-23T08:25:00Z", 0, 0),
                ("incident.resolved", "2026-11-23T08:30:00Z", 0, 1),
                ("incident.resolved", "2026-11-23T08:31:00Z", 0, 0)]  # a second resolve finds nothing open
    for kind, at, opened, resolved in timeline:
        answer = await (await post_pd(client, pd_event(kind, created_at=created, occurred_at=at),
                                      "new-pagerduty-secret")).json()
        assert (answer["incidents_opened"], answer["incidents_resolved"]) == (opened, resolved), kind
    incidents = sorted(await daemon.store.list_incidents(), key=lambda i: i.id)
    assert [(i.fingerprint, i.status.value) for i in incidents] == [("pd:Q1ABCDEF", "resolved")] * 2
    assert incidents[1].starts_at > incidents[0].starts_at


async def test_pagerduty_incident_events_without_incident_data_are_stored_without_alerts(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    reference = {"id": "Q1ABCDEF", "type": "incident_reference", "summary": "API latency above SLO"}
    events = [
        ("incident.annotated", {"type": "incident_note", "id": "P2LA89X", "content": "rolling back", "trimmed": False,
                                "incident": reference}),
        ("incident.responder.added", {"type": "incident_responder", "state": "pending", "message": "help",
                                      "incident": reference, "user": {"id": "PVMGSML", "type": "user_reference"}}),
        ("incident.status_update_published", {"type": "incident_status_update", "id": "P3", "message": "fixing",
                                              "incident": reference}),
    ]
    for kind, data in events:
        event = pd_event(kind)
        event["event"]["data"] = data
        resp = await post_pd(client, event, "new-pagerduty-secret")
        assert resp.status == 200, (kind, await resp.text())
        assert (await resp.json())["alerts"] == 0
    assert await stored_payloads(daemon) == 3
    assert await daemon.store.list_incidents() == []


async def test_pagerduty_ping_is_recorded_and_malformed_is_400(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    ping = await post_pd(client, pd_event("pagey.ping"), "new-pagerduty-secret")
    assert ping.status == 200 and (await ping.json())["alerts"] == 0
    assert await stored_payloads(daemon) == 1
    broken = {"event": {"id": "x", "event_type": "incident.triggered", "occurred_at": "now", "data": {}}}
    resp = await post_pd(client, broken, "new-pagerduty-secret")
    assert resp.status == 400
    assert (await resp.json())["field"] == "event.data.id"
    assert await stored_payloads(daemon) == 1


async def test_grafana_payload_is_mapped_and_auth_enforced(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    body = dumps(grafana_payload(pod="api-1"))
    good = {"Authorization": "Bearer grafana-bearer-token",
            "X-Grafana-Alerting-Signature": grafana_signature(body, "grafana-hmac-secret"),
            "Content-Type": "application/json"}
    no_token = {k: v for k, v in good.items() if k != "Authorization"}
    bad_sig = good | {"X-Grafana-Alerting-Signature": grafana_signature(body, "nope")}
    for headers in (no_token, bad_sig):
        assert (await client.post("/webhooks/grafana", data=body, headers=headers)).status == 401
    assert await stored_payloads(daemon) == 0
    resp = await client.post("/webhooks/grafana", data=body, headers=good)
    assert resp.status == 200, await resp.text()
    [incident] = await daemon.store.list_incidents()
    assert incident.source == "grafana" and incident.alertname == "HighCPU"
    assert incident.extra["dashboard_url"] == "http://grafana:3000/d/abc"
    assert incident.extra["values"] == {"B": 93.5, "C": 1}
    wrong_version = dumps(grafana_payload() | {"version": "4"})
    resp = await client.post("/webhooks/grafana", data=wrong_version, headers=good | {
        "X-Grafana-Alerting-Signature": grafana_signature(wrong_version, "grafana-hmac-secret")})
    assert resp.status == 400 and (await resp.json())["field"] == "version"


async def test_grafana_timestamped_signature_refuses_stale_requests(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    client, _ = await start(daemon_client, store_url, tmp_path,
                            {"timestamp_header": "X-Grafana-Alerting-Signature-Timestamp"})
    body = dumps(grafana_payload())

    def headers(stamp: str) -> dict[str, str]:
        return {"Authorization": "Bearer grafana-bearer-token", "X-Grafana-Alerting-Signature-Timestamp": stamp,
                "X-Grafana-Alerting-Signature": grafana_signature(body, "grafana-hmac-secret", stamp)}

    now = str(int(time.time()))
    assert (await client.post("/webhooks/grafana", data=body, headers=headers(now))).status == 200
    stale = str(int(time.time()) - 3600)
    assert (await client.post("/webhooks/grafana", data=body, headers=headers(stale))).status == 401
    # A signature over the body alone is not accepted when a timestamp is configured.
    plain = headers(now) | {"X-Grafana-Alerting-Signature": grafana_signature(body, "grafana-hmac-secret")}
    assert (await client.post("/webhooks/grafana", data=body, headers=plain)).status == 401


async def test_replayed_signed_deliveries_are_stored_once(
        daemon_client: Any, store_url: str, tmp_path: Path, secrets: None) -> None:
    """Dedup keys come from signed data: a captured body sent again, whatever unsigned headers it now
    carries, is a duplicate; a poison timestamp is refused before the body is read."""
    client, daemon = await start(daemon_client, store_url, tmp_path, {"timestamp_header": "X-Grafana-Timestamp"})
    event = pd_event()
    first = await post_pd(client, event, "new-pagerduty-secret")
    assert (await first.json())["status"] == "accepted"
    for webhook_id in ("another-id", "", "x" * 300):
        again = await post_pd(client, event, "new-pagerduty-secret", webhook_id=webhook_id)
        assert again.status == 200 and (await again.json())["status"] == "duplicate", webhook_id
    assert await stored_payloads(daemon) == 1

    body = dumps(grafana_payload())
    stamp = str(int(time.time()))
    signed = {"Authorization": "Bearer grafana-bearer-token", "X-Grafana-Timestamp": stamp,
              "X-Grafana-Alerting-Signature": grafana_signature(body, "grafana-hmac-secret", stamp)}
    statuses = [(await (await client.post("/webhooks/grafana", data=body, headers=signed)).json())["status"]
                for _ in range(3)]
    assert statuses == ["accepted", "duplicate", "duplicate"]
    later = str(int(time.time()) + 1)
    resigned = signed | {"X-Grafana-Timestamp": later,
                         "X-Grafana-Alerting-Signature": grafana_signature(body, "grafana-hmac-secret", later)}
    assert (await (await client.post("/webhooks/grafana", data=body, headers=resigned)).json())["status"] == "accepted"
    for poison in ("nan", "inf", "-inf", "1e3", " 1", "²", stamp + ".5", "9" * 40):
        forged = signed | {"X-Grafana-Timestamp": poison,
                           "X-Grafana-Alerting-Signature": grafana_signature(body, "grafana-hmac-secret", poison)}
        assert (await client.post("/webhooks/grafana", data=body, headers=forged)).status == 401, poison
    assert await stored_payloads(daemon) == 3
