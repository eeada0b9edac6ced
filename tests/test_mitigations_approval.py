"""Approvals: a pending action runs once after a validly signed Slack approval; forged, stale and
replayed requests are refused; an unanswered approval expires and nothing runs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.admin import AdminEndpoint, admin_endpoint
from tests.test_mitigations_guard import alerts as api_alerts
from tests.test_mitigations_guard import audit, config_for, post_burst, wait_processed

SECRET = "slack-signing-secret-0123"


@pytest.fixture(autouse=True)
def signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)


def interaction(approval_id: int, action_id: str = "approve") -> bytes:
    payload = {"type": "block_actions", "user": {"id": "U123", "username": "alice"},
               "actions": [{"action_id": action_id, "value": str(approval_id)}]}
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, *, timestamp: float | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(timestamp if timestamp is not None else time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    # Lower-case names, as HTTP/2 proxies deliver them: header names are case-insensitive.
    return {"x-slack-request-timestamp": ts, "x-slack-signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


async def start(daemon_client: Any, store_url: str, tmp_path: Path, endpoint: AdminEndpoint,
                timeout: str = "10m") -> tuple[Any, Any]:
    rules = tmp_path / "rules"
    config = config_for(store_url, tmp_path, endpoint, **{"mitigations.approvals": {
        "timeout": timeout, "slack_signing_secret": {"env": "SLACK_SIGNING_SECRET"}}})
    text = (rules / "rules.yaml").read_text().replace("mode: enforce", "mode: enforce\n        requires_approval: true")
    (rules / "rules.yaml").write_text(text)
    return await daemon_client(config)


async def pending_approval(daemon: Any) -> int:
    rows = await audit(daemon)
    assert [r["outcome"] for r in rows] == ["pending"]
    async with daemon.store.db.transaction() as conn:
        return int(await conn.fetchval("SELECT id FROM approvals WHERE action_id = $1", rows[0]["id"]))


async def wait_outcome(daemon: Any, action_id: int, outcome: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            row = next(r for r in await audit(daemon) if r["id"] == action_id)
            if row["outcome"] == outcome:
                return row
            await asyncio.sleep(0.05)


async def test_signed_approval_executes_once_and_forgeries_are_refused(
        daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        client, daemon = await start(daemon_client, store_url, tmp_path, endpoint)
        await post_burst(client, api_alerts(3))
        await wait_processed(daemon, 3)
        rows = await audit(daemon)
        assert sorted(r["outcome"] for r in rows) == ["pending", "skipped", "skipped"]
        pending = next(r for r in rows if r["outcome"] == "pending")
        async with daemon.store.db.transaction() as conn:
            approval_id = int(await conn.fetchval("SELECT id FROM approvals WHERE action_id = $1", pending["id"]))
        assert endpoint.calls == []

        body = interaction(approval_id)
        forged = await client.post("/slack/interactions", data=body, headers=signed(body, secret="wrong-secret"))
        stale = await client.post("/slack/interactions", data=body, headers=signed(body, timestamp=time.time() - 600))
        unsigned = await client.post("/slack/interactions", data=body)
        assert [forged.status, stale.status, unsigned.status] == [401, 401, 401]
        await asyncio.sleep(0.3)
        assert endpoint.calls == []

        headers = signed(body)
        ok = await client.post("/slack/interactions", data=body, headers=headers)
        assert ok.status == 200 and (await ok.json())["state"] == "approved"
        replay = await client.post("/slack/interactions", data=body, headers=headers)
        assert replay.status == 401 and "replay" in (await replay.json())["detail"]
        # A second, genuinely new click on the same approval changes nothing.
        again = await client.post("/slack/interactions", data=body, headers=signed(body, timestamp=time.time() + 1))
        assert again.status == 200 and (await again.json())["changed"] is False

        executed = await wait_outcome(daemon, pending["id"], "executed")
        await asyncio.sleep(0.3)
    assert executed["actor"] == "slack:U123 (alice)"
    assert len(endpoint.calls) == 1


async def test_denied_approval_runs_nothing(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        client, daemon = await start(daemon_client, store_url, tmp_path, endpoint)
        await post_burst(client, api_alerts(1))
        await wait_processed(daemon, 1)
        approval_id = await pending_approval(daemon)
        body = interaction(approval_id, "deny")
        resp = await client.post("/slack/interactions", data=body, headers=signed(body))
        assert resp.status == 200 and (await resp.json())["state"] == "denied"
        await asyncio.sleep(0.3)
        metrics = await (await client.get("/metrics")).text()
        assert 'responder_actions_total{action="http.request",guard="",outcome="pending"} 1.0' in metrics
        assert 'responder_actions_total{action="http.request",guard="approval",outcome="denied"} 1.0' in metrics
        row = (await audit(daemon))[0]
    assert (row["outcome"], row["actor"]) == ("denied", "slack:U123 (alice)")
    assert endpoint.calls == []


async def test_unanswered_approval_expires(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        client, daemon = await start(daemon_client, store_url, tmp_path, endpoint, timeout="500ms")
        await post_burst(client, api_alerts(1))
        await wait_processed(daemon, 1)
        approval_id = await pending_approval(daemon)
        row = await wait_outcome(daemon, (await audit(daemon))[0]["id"], "expired")
        body = interaction(approval_id)
        late = await client.post("/slack/interactions", data=body, headers=signed(body))
        assert late.status == 200 and (await late.json()) | {"text": ""} == {
            "approval_id": approval_id, "state": "expired", "changed": False, "text": ""}
        await asyncio.sleep(0.3)
    assert (row["guard"], row["reason"]) == ("approval", "nobody answered in time")
    assert endpoint.calls == []
