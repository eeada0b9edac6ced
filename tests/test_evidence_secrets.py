"""No configured secret reaches stored evidence, through the real daemon, pipeline and store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import make_config, write_rules
from tests.support.alerts import am_alert, am_payload
from tests.support.services import free_port

SECRET = "Zq8-very-secret-api-key-77"
DB_PASSWORD = "pg-pass-4412"

RULES = """
rules:
  - name: leaky
    match: ['alertname="Leaky"']
    collectors:
      - {id: echo, type: http.check, params: {target: echo, body_bytes: 2000}}
      - {id: db, type: postgres.connectivity, params: {target: broken}, timeout: 5s}
"""


async def test_configured_secrets_never_reach_stored_evidence(
        tmp_path: Path, store_url: str, daemon_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def echo(request: web.Request) -> web.Response:
        # An endpoint that echoes what it was sent, credentials included, as debug endpoints do.
        return web.Response(text="\n".join(f"{k}: {v}" for k, v in request.headers.items()) + f"\nkey={SECRET}")

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("ECHO_KEY", SECRET)
    monkeypatch.setenv("BROKEN_DSN", f"postgresql://app:{DB_PASSWORD}@127.0.0.1:1/nothing")
    try:
        config = make_config(store_url, write_rules(tmp_path / "rules", RULES), targets={
            "http": {"echo": {"url": f"http://127.0.0.1:{port}/", "headers": {"X-Api-Key": {"env": "ECHO_KEY"}}}},
            "postgres": {"broken": {"dsn": {"env": "BROKEN_DSN"}}},
        })
        client, daemon = await daemon_client(config)
        assert (await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Leaky")))).status == 200
        async with asyncio.timeout(30):
            while not (incidents := await daemon.store.list_incidents()) or incidents[0].processed_at is None:
                await asyncio.sleep(0.1)
        rows = await daemon.store.evidence(incidents[0].id)
    finally:
        await runner.cleanup()
    assert {r["step"]: r["status"] for r in rows} == {"echo": "ok", "db": "error"}
    stored = repr([dict(r) for r in rows])
    assert "X-Api-Key" in stored, "the echoed header is in the evidence ..."
    assert SECRET not in stored and DB_PASSWORD not in stored, "... but never its value"
    assert "[REDACTED]" in stored


ACTION_RULES = """
rules:
  - name: leaky-admin
    match: ['alertname="LeakyAdmin"']
    mode: enforce
    mitigations:
      - {id: enable, type: http.request, params: {target: admin, path: /admin/enable}, requires_approval: false}
      - {id: fail, type: http.request, params: {target: admin, path: /admin/fail}, requires_approval: false}
"""


async def test_configured_secrets_never_reach_the_mitigation_audit(
        tmp_path: Path, store_url: str, daemon_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin endpoint that echoes its credentials, in its answer and in its error: the audit (and so
    `actions list`, Slack and /api, which read it) and the sink events never carry the secret."""
    async def echo(request: web.Request) -> web.Response:
        text = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        return web.Response(text=text, status=500 if request.path.endswith("fail") else 200)

    app = web.Application()
    app.router.add_post("/admin/{what}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setenv("ADMIN_KEY", SECRET)
    try:
        config = make_config(store_url, write_rules(tmp_path / "rules", ACTION_RULES), **{
            "targets": {"http": {"admin": {"url": f"http://127.0.0.1:{port}",
                                           "headers": {"X-Api-Key": {"env": "ADMIN_KEY"}}}}},
            "mitigations.mode": "enforce", "mitigations.cooldown": 0})
        client, daemon = await daemon_client(config)
        assert (await client.post("/webhooks/alertmanager", json=am_payload(am_alert("LeakyAdmin")))).status == 200
        async with asyncio.timeout(30):
            while len(rows := await daemon.store.actions(1)) < 2 or any(
                    r["outcome"] in ("pending", "executing") for r in rows):
                await asyncio.sleep(0.1)
        async with daemon.store.db.read() as conn:
            sink_events = [r["payload"] for r in await conn.fetch("SELECT payload FROM jobs")]
    finally:
        await runner.cleanup()
    assert sorted(r["outcome"] for r in rows) == ["executed", "failed"]
    stored = repr([dict(r) for r in rows]) + repr(sink_events)
    assert "X-Api-Key" in stored, "the echoed header is in the output and the error ..."
    assert SECRET not in stored, "... but never its value"
