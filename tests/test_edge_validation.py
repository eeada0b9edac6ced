"""Validation at the edge, on both stores: limits, control characters and times are refused with a 400
naming the field, and nothing of the delivery is stored (a NUL used to be a 500 on PostgreSQL, which
Alertmanager retries forever)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_config, write_rules
from tests.support.alerts import am_alert, am_payload
from tests.support.vendors import pd_event

RULES = """
rules:
  - name: errors
    match: ['alertname="HighErrorRate"']
"""


async def stored(daemon: Any) -> dict[str, int]:
    async with daemon.store.db.transaction() as conn:
        return {t: int(await conn.fetchval(f"SELECT COUNT(*) FROM {t}")) for t in ("payloads", "alerts", "incidents")}


async def start(daemon_client: Any, store_url: str, tmp_path: Path, **overrides: Any) -> Any:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES),
                         intakes={"alertmanager": {"auth": {"unauthenticated": "loopback"}},
                                  "pagerduty": {"auth": {"unauthenticated": "loopback"}}}, **overrides)
    return await daemon_client(config)


def with_alert(**changes: Any) -> dict[str, Any]:
    """A valid payload with some fields of its alert changed (labels and annotations are added to)."""
    alert = am_alert()
    for key in ("labels", "annotations"):
        alert[key] = alert[key] | changes.pop(key, {})
    return am_payload(alert | changes)


# (payload, field named in the answer): an attacker's variants of each class.
CONTROL_CHARACTERS = [
    (with_alert(labels={"alertname": "High\x00ErrorRate"}), "alerts.0.labels.alertname"),
    (with_alert(fingerprint="c0ffee\x00"), "alerts.0.fingerprint"),
    (with_alert(labels={"service": "api\x1b[2J"}), "alerts.0.labels.service"),
    (with_alert(labels={"service": "\u202egnp.exe"}), "alerts.0.labels.service"),
    (with_alert(labels={"svc\x00": "a"}), "alerts.0.labels.'svc\\x00'"),
    (with_alert(labels={"service": "a\x9bb"}), "alerts.0.labels.service"),
    (with_alert(annotations={"summary": "ok\x00"}), "alerts.0.annotations.summary"),
    (with_alert(annotations={"description": "line\x07bell"}), "alerts.0.annotations.description"),
    (with_alert(generatorURL="http://p/\x00"), "alerts.0.generatorURL"),
    (am_payload() | {"externalURL": "http://am\x00"}, "alerts.0.external_url"),
    (am_payload() | {"receiver": "r\r\n"}, "alerts.0.receiver"),
    (am_payload() | {"groupKey": "{}\x00"}, "groupKey"),
]

LIMITS = [
    (am_payload(*[am_alert(fingerprint=f"f{i}") for i in range(1001)]), "alerts"),
    (with_alert(labels={f"l{i}": "v" for i in range(101)}), "alerts.0.labels"),
    (with_alert(annotations={f"a{i}": "v" for i in range(101)}), "alerts.0.annotations"),
    (with_alert(labels={"service": "s" * 4097}), "alerts.0.labels.service"),
    (with_alert(labels={"n" * 257: "v"}), "alerts.0.labels.'" + "n" * 64 + "'"),
    (with_alert(annotations={"description": "é" * 40000}), "alerts.0.annotations.description"),
    (with_alert(fingerprint="f" * 257), "alerts.0.fingerprint"),
    (with_alert(generatorURL="http://p/" + "x" * 9000), "alerts.0.generatorURL"),
]

TIMES = [
    (with_alert(startsAt="9999-12-31T23:59:59-23:59"), "alerts.0.startsAt"),  # year 10000 in UTC
    (with_alert(startsAt="2999-01-01T00:00:00Z"), "alerts.0.startsAt"),
    (with_alert(startsAt="1900-01-01T00:00:00Z"), "alerts.0.startsAt"),
    (with_alert(startsAt="2026-11-23T08:00:00"), "alerts.0.startsAt"),  # no zone
    (with_alert(startsAt="2026-11-23"), "alerts.0.startsAt"),
    (with_alert(startsAt="nan"), "alerts.0.startsAt"),
    (with_alert(endsAt="9999-12-31T23:59:59-23:59", status="resolved"), "alerts.0.endsAt"),
    (with_alert(endsAt="soon"), "alerts.0.endsAt"),
    (with_alert(endsAt="2026-11-23T09:00:00"), "alerts.0.endsAt"),
]


@pytest.mark.parametrize(("payload", "field"), CONTROL_CHARACTERS + LIMITS + TIMES)
async def test_refused_with_the_field_named_and_nothing_stored(
        daemon_client: Any, store_url: str, tmp_path: Path, payload: dict[str, Any], field: str) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    resp = await client.post("/webhooks/alertmanager", json=payload)
    body = await resp.json()
    assert resp.status == 400, body
    assert body["field"] == field, body
    assert await stored(daemon) == {"payloads": 0, "alerts": 0, "incidents": 0}
    # The same delivery without the hostile part is accepted: the refusal is about that field only.
    assert (await client.post("/webhooks/alertmanager", json=am_payload())).status == 200


async def test_limits_are_configurable_and_name_their_key(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, _ = await start(daemon_client, store_url, tmp_path, **{"server.limits.max_labels": 3})
    resp = await client.post("/webhooks/alertmanager", json=with_alert(labels={"a": "1", "b": "2"}))
    body = await resp.json()
    assert resp.status == 400 and "server.limits.max_labels" in body["detail"], body


async def test_free_text_keeps_tabs_line_breaks_and_rtl_marks(daemon_client: Any, store_url: str,
                                                              tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    annotations = {"description": "first\tline\r\nsecond line \u200f\u05e9\u05dc\u05d5\u05dd\u200e"}
    resp = await client.post("/webhooks/alertmanager", json=with_alert(annotations=annotations))
    assert resp.status == 200, await resp.text()
    [incident] = await daemon.store.list_incidents()
    assert incident.annotations["description"] == annotations["description"]


async def test_pagerduty_times_and_titles_are_checked_too(daemon_client: Any, store_url: str, tmp_path: Path) -> None:
    client, daemon = await start(daemon_client, store_url, tmp_path)
    event = pd_event()
    event["event"]["occurred_at"] = "2026-11-23T08:00:00"
    resp = await client.post("/webhooks/pagerduty", json=event)
    assert resp.status == 400 and (await resp.json())["field"] == "event.occurred_at"
    event = pd_event()
    event["event"]["data"]["title"] = "db down\x00"
    resp = await client.post("/webhooks/pagerduty", json=event)
    assert resp.status == 400 and (await resp.json())["field"] == "alerts.0.labels.alertname"
    assert await stored(daemon) == {"payloads": 0, "alerts": 0, "incidents": 0}


async def test_the_console_shows_control_characters_instead_of_obeying_them(
        daemon_client: Any, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Evidence comes from targets (logs, command output): what a terminal would interpret is escaped."""
    rules = write_rules(tmp_path / "console-rules", r"""
rules:
  - name: noisy
    match: ['alertname="HighErrorRate"']
    collectors:
      - {id: logs, type: test.sleep, params: {label: "log \e[2J\e]0;owned\a \u202egnp.exe \x9b31m"}}
""")
    config = make_config(store_url, rules, plugins=["tests.support.plugins"],
                         intakes={"alertmanager": {"auth": {"unauthenticated": "loopback"}}},
                         **{"sinks.console.enabled": True})
    client, _ = await daemon_client(config)
    assert (await client.post("/webhooks/alertmanager", json=am_payload())).status == 200
    async with asyncio.timeout(20):
        while "log " not in (printed := capsys.readouterr().out):
            await asyncio.sleep(0.1)
    assert not any(c in printed for c in ("\x1b", "\x07", "\u202e", "\x9b")), repr(printed)
    assert "\\x1b[2J" in printed and "\\u202egnp.exe" in printed
