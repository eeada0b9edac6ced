"""The Alertmanager webhook, on both stores: authentication, bad input, durability, idempotency."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config, write_rules
from tests.support.alerts import am_alert, am_payload

RULES = """
rules:
  - name: errors
    match: ['alertname="HighErrorRate"']
"""

TOKEN = "s3cr3t-token-value"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AM_TOKEN", TOKEN)
    monkeypatch.setenv("AM_PASSWORD", "hunter22")
    return TOKEN


def auth_config() -> dict[str, Any]:
    return {"intakes": {"alertmanager": {"auth": {
        "bearer_token": {"env": "AM_TOKEN"},
        "basic": {"username": "am", "password": {"env": "AM_PASSWORD"}},
    }}}}


async def counts(daemon: Any) -> dict[str, int]:
    async with daemon.store.db.transaction() as conn:
        return {t: int(await conn.fetchval(f"SELECT COUNT(*) FROM {t}"))
                for t in ("payloads", "alerts", "incidents", "jobs")}


async def wait_processed(daemon: Any, incidents: int, timeout: float = 10) -> None:
    async def done() -> bool:
        async with daemon.store.db.transaction() as conn:
            n = await conn.fetchval("SELECT COUNT(*) FROM incidents WHERE processed_at IS NOT NULL")
        return int(n) >= incidents
    async with asyncio.timeout(timeout):
        while not await done():
            await asyncio.sleep(0.05)


async def start(daemon_client: Any, store_url: str, tmp_path: Path, **overrides: Any) -> Any:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), **overrides)
    return await daemon_client(config)


async def test_bearer_and_basic_auth_accepted_and_wrong_credentials_refused(
        daemon_client: Any, store_url: str, tmp_path: Path, token_env: str) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path, **{"intakes": auth_config()["intakes"]})
    body = am_payload()
    refused = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + base64.b64encode(b"am:wrong").decode()},
        {"Authorization": "Basic !!!"},
    ]
    for headers in refused:
        resp = await client.post("/webhooks/alertmanager", json=body, headers=headers)
        assert resp.status == 401, headers
        assert (await resp.json())["error"] == "unauthorized"
    assert (await counts(daemon))["payloads"] == 0

    ok = await client.post("/webhooks/alertmanager", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    basic = base64.b64encode(b"am:hunter22").decode()
    ok2 = await client.post("/webhooks/alertmanager", json=body, headers={"Authorization": f"Basic {basic}"})
    assert ok2.status == 200
    assert (await counts(daemon))["payloads"] == 2


@pytest.mark.parametrize(("body", "field", "detail"), [
    (b"{not json", "", "not valid JSON"),
    (b"[1, 2]", "", "expected a JSON object"),
    (json.dumps({**am_payload(), "version": "3"}).encode(), "version", "unsupported payload version"),
    (json.dumps({k: v for k, v in am_payload().items() if k != "alerts"}).encode(), "alerts", "Field required"),
    (json.dumps(am_payload(am_alert(labels={"pod": 5}))).encode(), "alerts.0.labels.pod",
     "string"),
    (json.dumps(am_payload(am_alert() | {"status": "exploded"})).encode(), "alerts.0.status", "firing"),
    (json.dumps(am_payload(am_alert() | {"startsAt": "yesterday"})).encode(), "alerts.0.startsAt", "RFC 3339"),
])
async def test_bad_input_is_400_naming_the_problem_and_stores_nothing(
        daemon_client: Any, store_url: str, tmp_path: Path, body: bytes, field: str, detail: str) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    resp = await client.post("/webhooks/alertmanager", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    answer = await resp.json()
    assert answer["error"] == "invalid payload"
    assert answer["field"] == field
    assert detail in answer["detail"]
    assert await counts(daemon) == {"payloads": 0, "alerts": 0, "incidents": 0, "jobs": 0}


async def test_oversized_body_is_413_and_stores_nothing(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path, **{"server.max_body_bytes": 2000})
    big = am_payload(*[am_alert(labels={"pod": f"api-{i}"}) for i in range(40)])
    resp = await client.post("/webhooks/alertmanager", json=big)
    assert resp.status == 413
    assert "2000" in (await resp.json())["detail"]
    assert (await counts(daemon))["payloads"] == 0


async def test_2xx_only_after_commit_and_503_when_the_store_is_down(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    resp = await client.post("/webhooks/alertmanager", json=am_payload())
    assert resp.status == 200
    answer = await resp.json()
    # The answer names the stored payload: it is readable the moment the 2xx arrives.
    async with daemon.store.db.transaction() as conn:
        assert await conn.fetchval("SELECT COUNT(*) FROM payloads WHERE id = $1", answer["payload_id"]) == 1

    await daemon.store.db.close()  # the database goes away under the running daemon
    resp = await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Other")))
    assert resp.status == 503
    assert (await resp.json())["error"] == "store unavailable"
    ready = await client.get("/readyz")
    assert ready.status == 503


async def test_duplicate_delivery_keeps_one_incident_and_runs_the_rule_once(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    for _ in range(3):
        assert (await client.post("/webhooks/alertmanager", json=am_payload())).status == 200
    await wait_processed(daemon, 1)
    await asyncio.sleep(0.3)
    incidents = await daemon.store.list_incidents()
    assert len(incidents) == 1
    assert incidents[0].deliveries == 3
    assert incidents[0].rule == "errors"
    jobs = await daemon.store.queue.rows(queue="pipeline")
    assert [(j["kind"], j["status"]) for j in jobs] == [("process", "done")]


async def test_ten_identical_concurrent_deliveries_open_one_incident(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    responses = await asyncio.gather(*(client.post("/webhooks/alertmanager", json=am_payload()) for _ in range(10)))
    assert [r.status for r in responses] == [200] * 10
    incidents = await daemon.store.list_incidents()
    assert len(incidents) == 1 and incidents[0].deliveries == 10
    assert len(await daemon.store.queue.rows(queue="pipeline")) == 1


async def test_resolve_then_refire_opens_a_new_incident(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    await client.post("/webhooks/alertmanager", json=am_payload())
    resolved = am_alert(status="resolved")
    resp = await client.post("/webhooks/alertmanager", json=am_payload(resolved))
    assert (await resp.json())["incidents_resolved"] == 1
    first = (await daemon.store.list_incidents())[0]
    assert first.status.value == "resolved" and first.resolved_at is not None

    # A late re-delivery of the old firing must not reopen it.
    await client.post("/webhooks/alertmanager", json=am_payload())
    assert [i.status.value for i in await daemon.store.list_incidents()] == ["resolved"]

    refire = am_alert(starts_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)))
    resp = await client.post("/webhooks/alertmanager", json=am_payload(refire))
    assert (await resp.json())["incidents_opened"] == 1
    second, again_first = await daemon.store.list_incidents()
    assert (again_first.id, again_first.status.value) == (first.id, "resolved")
    assert second.status.value == "open" and second.id != first.id
    await wait_processed(daemon, 2)
    kinds = [(j["incident_id"], j["kind"]) for j in await daemon.store.queue.rows(queue="pipeline")]
    assert kinds == [(first.id, "process"), (first.id, "resolve"), (second.id, "process")]


async def test_firing_alert_with_future_ends_at_is_not_resolved(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    alert = am_alert() | {"endsAt": "2099-01-01T00:00:00Z"}
    await client.post("/webhooks/alertmanager", json=am_payload(alert))
    assert [i.status.value for i in await daemon.store.list_incidents()] == ["open"]


async def test_health_ready_and_metrics(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["rules"] == 1
    await client.post("/webhooks/alertmanager", json=am_payload())
    await client.post("/webhooks/alertmanager", data=b"nope")
    await wait_processed(daemon, 1)
    text = await (await client.get("/metrics")).text()
    assert 'responder_webhook_requests_total{code="200",intake="alertmanager"} 1.0' in text
    assert 'responder_webhook_requests_total{code="400",intake="alertmanager"} 1.0' in text
    assert 'responder_alerts_received_total{source="alertmanager",status="firing"} 1.0' in text
    assert 'responder_rule_matches_total{rule="errors"} 1.0' in text
    assert "responder_pipeline_duration_seconds_bucket" in text
    unknown = await client.get("/nope")
    assert unknown.status == 404 and (await unknown.json())["error"] == "not found"
