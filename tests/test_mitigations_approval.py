"""Approvals: a pending action runs once after a validly signed Slack approval; forged, stale and
replayed requests are refused; an unanswered approval expires and nothing runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import AdminEndpoint, admin_endpoint
from tests.support.slack_clicks import SECRET, click, handled, press, signed
from tests.test_mitigations_guard import alerts as api_alerts
from tests.test_mitigations_guard import audit, config_for, post_burst, wait_processed


@pytest.fixture(autouse=True)
def signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)


async def start(daemon_client: Any, store_url: str, tmp_path: Path, endpoint: AdminEndpoint,
                timeout: str = "10m") -> tuple[Any, Any]:
    rules = tmp_path / "rules"
    # The sender's groups: alerts of one delivery are one incident, which asks once.
    config = config_for(store_url, tmp_path, endpoint, group_by="null", **{"mitigations.approvals": {
        "timeout": timeout, "slack_signing_secret": {"env": "SLACK_SIGNING_SECRET"}},
        "sinks.slack.permissions": {"approve": ["U123"]}})
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
        # Three alerts of one group: one incident, which asks once.
        await post_burst(client, api_alerts(3))
        await wait_processed(daemon, 1)
        rows = await audit(daemon)
        assert [r["outcome"] for r in rows] == ["pending"]
        pending = rows[0]
        async with daemon.store.db.transaction() as conn:
            approval_id = int(await conn.fetchval("SELECT id FROM approvals WHERE action_id = $1", pending["id"]))
        assert endpoint.calls == []

        body = press("approve", approval_id)
        forged = await client.post("/slack/interactions", data=body, headers=signed(body, secret="wrong-secret"))
        stale = await client.post("/slack/interactions", data=body, headers=signed(body, timestamp=time.time() - 600))
        unsigned = await client.post("/slack/interactions", data=body)
        assert [forged.status, stale.status, unsigned.status] == [401, 401, 401]
        await asyncio.sleep(0.3)
        assert endpoint.calls == []

        # Somebody not in sinks.slack.permissions.approve: refused, and the refusal is in the audit.
        outsider = await click(client, "approve", approval_id, user="U999", username="mallory")
        assert (await handled(daemon, outsider["click_id"]))["outcome"] == "refused"

        headers = signed(body)
        ok = await client.post("/slack/interactions", data=body, headers=headers)
        assert ok.status == 200 and (await ok.json())["queued"] is True
        first = (await ok.json())["click_id"]
        replay = await client.post("/slack/interactions", data=body, headers=headers)
        assert replay.status == 401 and "replay" in (await replay.json())["detail"]
        # Slack retrying the same press (signed anew) is the same click; a second press changes nothing.
        retry = await client.post("/slack/interactions", data=body, headers=signed(body, timestamp=time.time() + 1))
        assert retry.status == 200 and await retry.json() == {"click_id": first, "queued": False}
        again = await click(client, "approve", approval_id)

        executed = await wait_outcome(daemon, pending["id"], "executed")
        assert (await handled(daemon, first))["outcome"] == "done"
        assert (await handled(daemon, again["click_id"]))["outcome"] == "unchanged"
        await asyncio.sleep(0.3)
    assert executed["actor"] == "slack:U123 (alice)"
    assert len(endpoint.calls) == 1


async def test_denied_approval_runs_nothing(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    async with admin_endpoint() as endpoint:
        client, daemon = await start(daemon_client, store_url, tmp_path, endpoint)
        await post_burst(client, api_alerts(1))
        await wait_processed(daemon, 1)
        approval_id = await pending_approval(daemon)
        denied = await click(client, "deny", approval_id)
        assert (await handled(daemon, denied["click_id"]))["outcome"] == "done"
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
        late = await click(client, "approve", approval_id)
        row_late = await handled(daemon, late["click_id"])
        assert (row_late["outcome"], row_late["detail"]) == ("unchanged", f"approval {approval_id} is expired")
        await asyncio.sleep(0.3)
    assert (row["guard"], row["reason"]) == ("approval", "nobody answered in time")
    assert endpoint.calls == []
