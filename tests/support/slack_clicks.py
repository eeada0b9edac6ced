"""Button presses as Slack sends them to POST /slack/interactions: a signed, form-encoded `block_actions`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from typing import Any
from urllib.parse import urlencode

SECRET = "slack-signing-secret-0123"
_action_ts = itertools.count(1)


def press(action_id: str, value: int, *, user: str = "U123", username: str = "alice", channel: str = "C0INCIDENTS",
          message_ts: str = "1700000000.000100", action_ts: str | None = None) -> bytes:
    """One press; each call is a new press (its own action_ts) unless `action_ts` repeats one."""
    payload: dict[str, Any] = {
        "type": "block_actions", "user": {"id": user, "username": username, "name": username, "team_id": "T0FAKE"},
        "team": {"id": "T0FAKE", "domain": "fake"}, "channel": {"id": channel, "name": "incidents"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": "1.2.3", "response_url": "https://hooks.slack.test/actions/T0FAKE/1/x",
        "actions": [{"type": "button", "action_id": action_id, "block_id": f"console:{value}", "value": str(value),
                     "action_ts": action_ts or f"{time.time():.6f}{next(_action_ts)}"}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def signed(body: bytes, *, timestamp: float | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = str(int(timestamp if timestamp is not None else time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    # Lower-case names, as HTTP/2 proxies deliver them: header names are case-insensitive.
    return {"x-slack-request-timestamp": ts, "x-slack-signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


async def click(client: Any, action_id: str, value: int, **kwargs: Any) -> dict[str, Any]:
    """Press a button through the daemon's endpoint; the JSON answer (it must be 200)."""
    body = press(action_id, value, **kwargs)
    started = time.monotonic()
    resp = await client.post("/slack/interactions", data=body, headers=signed(body))
    assert resp.status == 200, await resp.text()
    # Slack shows an error to whoever clicked unless the answer comes within 3 s.
    assert time.monotonic() - started < 3.0
    answer: dict[str, Any] = await resp.json()
    return answer


async def handled(daemon: Any, click_id: int, timeout: float = 20) -> dict[str, Any]:
    """The press's audit row once its job has recorded an outcome."""
    async with asyncio.timeout(timeout):
        while True:
            async with daemon.store.db.read() as conn:
                row = await conn.fetchrow("SELECT * FROM slack_clicks WHERE id = $1", click_id)
            if row is not None and row["outcome"] not in ("queued", "handling"):
                return dict(row)
            await asyncio.sleep(0.05)
