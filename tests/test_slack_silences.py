"""Silences from the thread against a real Alertmanager (the Debian package): a signed "Silence 1h" press
creates one silence that `amtool silence query` lists with the group's matchers and the Slack user as its
creator, Alertmanager stops notifying for the group, "Unsilence" expires it, and an Alertmanager that is
down gives the presser an ephemeral error and an audit row."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.slack_api import FakeSlack, Message
from tests.support.alertmanager import Alertmanager
from tests.support.services import free_port
from tests.support.slack_clicks import SECRET, click, handled
from tests.test_slack import TOKEN, settled, slack_config

pytestmark = pytest.mark.slow

GROUP = "ConsoleSilence"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SLACK_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(TOKEN) as fake:
        yield fake


async def eventually(check: Any, timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def deliveries(daemon: Any) -> int:
    async with daemon.store.db.read() as conn:
        return int(await conn.fetchval("SELECT COUNT(*) FROM payloads WHERE source = 'alertmanager'"))


def parent(slack: FakeSlack) -> Message | None:
    parents = slack.parents("#incidents")
    return parents[0] if parents else None


async def test_silence_and_unsilence_in_a_real_alertmanager(daemon_client: Any, store_url: str, tmp_path: Path,
                                                            slack: FakeSlack) -> None:
    am_port = free_port()
    config = slack_config(store_url, tmp_path, slack, "rules: []\n", **{
        "mitigations.approvals.slack_signing_secret": {"env": "SLACK_SIGNING_SECRET"},
        "targets.alertmanager": {"main": {"url": f"http://127.0.0.1:{am_port}", "timeout": "2s"}}})
    client, daemon = await daemon_client(config)
    webhook = f"http://127.0.0.1:{client.server.port}/webhooks/alertmanager"
    async with Alertmanager(tmp_path / "am", webhook, port=am_port) as am:
        am.amtool_alert({"alertname": GROUP, "service": "api", "severity": "warning"})
        # The group reaches the daemon; its parent offers the silence buttons (the delivery's externalURL
        # is the configured target's URL).
        first = await eventually(lambda: _with_buttons(slack), what="the parent with its silence buttons")
        [incident] = await daemon.store.list_incidents()
        assert [b for b in first if b.startswith("silence")] == ["silence_1h", "silence_4h", "silence_24h"]

        # A double click: one silence.
        presses = await asyncio.gather(click(client, "silence_1h", incident.id),
                                       click(client, "silence_1h", incident.id, user="U456", username="bob"))
        rows = [await handled(daemon, p["click_id"]) for p in presses]
        assert sorted(r["outcome"] for r in rows) == ["done", "unchanged"]
        presser = next(r for r in rows if r["outcome"] == "done")
        [silence] = [s for s in am.amtool_json("silence", "query") if s["status"]["state"] == "active"]
        assert [(m["name"], m["value"], m["isRegex"], m.get("isEqual", True)) for m in silence["matchers"]] == [
            ("alertname", GROUP, False, True)]
        assert silence["createdBy"] == f"slack:{presser['user_id']} ({presser['user_name']})"
        assert "https://fake.slack.com/archives/C0INCIDENTS/p" in silence["comment"]
        ends = time.mktime(time.strptime(silence["endsAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert 3500 < ends - time.time() < 3700
        await settled(daemon.store)
        shown = json.dumps(parent(slack).blocks)  # type: ignore[union-attr]
        assert "Silenced in Alertmanager main until" in shown and "unsilence" in shown
        replies = [m.text for m in slack.thread("#incidents", parent(slack).ts)[1:]]  # type: ignore[union-attr]
        assert sum(t.startswith("Silenced in Alertmanager main for 1h") for t in replies) == 1

        # A longer silence extends it: still one active silence, now ending in 4 h.
        longer = await click(client, "silence_4h", incident.id)
        assert (await handled(daemon, longer["click_id"]))["outcome"] == "done"
        [silence] = [s for s in am.amtool_json("silence", "query") if s["status"]["state"] == "active"]
        ends = time.mktime(time.strptime(silence["endsAt"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert 4 * 3600 - 100 < ends - time.time() < 4 * 3600 + 100

        # Alertmanager stops notifying for the group: a new alert in it is suppressed, not sent.
        before = await deliveries(daemon)
        am.amtool_alert({"alertname": GROUP, "service": "web", "severity": "warning"})
        await asyncio.sleep(6)  # three group_intervals
        assert await deliveries(daemon) == before
        suppressed = [a for a in am.amtool_json("alert", "query", "--silenced") if a["labels"]["service"] == "web"]
        assert suppressed and suppressed[0]["status"]["silencedBy"] == [silence["id"]]

        unsilence = await click(client, "unsilence", incident.id)
        assert (await handled(daemon, unsilence["click_id"]))["outcome"] == "done"
        states = {s["id"]: s["status"]["state"] for s in am.amtool_json("silence", "query", "--expired")}
        assert states[silence["id"]] == "expired"
        # Notifications for the group resume.
        await eventually(lambda: _more(daemon, before), what="a notification after the silence ended")

    # Alertmanager is down: the presser is told, and the press is in the audit with the reason.
    down = await click(client, "silence_4h", incident.id, user="U789", username="carol")
    row = await handled(daemon, down["click_id"])
    assert (row["outcome"], row["user_id"]) == ("failed", "U789") and "Alertmanager main" in row["detail"]
    told = await eventually(lambda: _told(slack, "U789"), what="the ephemeral error")
    assert told[0].startswith(":warning: Could not silence: Alertmanager main")


async def _with_buttons(slack: FakeSlack) -> list[str] | None:
    message = parent(slack)
    if message is None:
        return None
    found = [e["action_id"] for b in message.blocks if b["type"] == "actions" for e in b["elements"]]
    return found if any(b.startswith("silence") for b in found) else None


async def _more(daemon: Any, before: int) -> bool:
    return await deliveries(daemon) > before


async def _told(slack: FakeSlack, user: str) -> list[str]:
    return [m["text"] for m in slack.ephemeral if m["user"] == user]
