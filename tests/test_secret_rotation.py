"""A `{file: ...}` secret rotated on disk (as Kubernetes rotates a mounted Secret): the new value
authenticates after the reload interval or on SIGHUP, the old one no longer does, and both are redacted
from evidence."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import DaemonClient, make_config, write_rules
from tests.support.alerts import am_alert, am_payload
from tests.support.processes import responder_daemon, wait_http
from tests.support.services import free_port

OLD, NEW = "old-token-4711-abcdef", "new-token-0815-uvwxyz"

RULES = """
rules:
  - name: leaky
    match: ['alertname="Leaky"']
    collectors:
      - {id: echo, type: http.check, params: {target: echo, body_bytes: 2000}}
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_accepted(post: Any, token: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while await post(token) != 200:
        assert time.monotonic() < deadline, f"{token} was not accepted within {timeout}s"
        await asyncio.sleep(0.05)


async def test_a_rotated_file_secret_authenticates_after_the_interval_and_both_values_are_redacted(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(OLD + "\n")

    async def echo(request: web.Request) -> web.Response:  # a debug endpoint that prints what it knows
        return web.Response(text=f"previous credential {OLD}\ncurrent credential {NEW}\n")

    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        config = make_config(store_url, write_rules(tmp_path / "rules", RULES), **{
            "intakes.alertmanager.auth.bearer_token": {"file": str(token_file)},
            "secrets.reload_interval": "200ms",
            "targets.http": {"echo": {"url": f"http://127.0.0.1:{port}/"}},
            "sinks.console.enabled": False,
        })
        client, daemon = await daemon_client(config)

        async def post(token: str, alertname: str = "Probe") -> int:
            response = await client.post("/webhooks/alertmanager",
                                         json=am_payload(am_alert(alertname), group_key=alertname),
                                         headers=bearer(token))
            return int(response.status)

        assert await post(OLD) == 200
        assert await post(NEW) == 401
        token_file.write_text(NEW + "\n")
        await wait_accepted(post, NEW, timeout=5)
        assert await post(OLD) == 401
        # Evidence gathered after the rotation: the echo quotes both values.
        assert await post(NEW, "Leaky") == 200
        async with asyncio.timeout(30):
            while not (rows := [r for i in await daemon.store.list_incidents() if i.alertname == "Leaky"
                                for r in await daemon.store.evidence(i.id)]):
                await asyncio.sleep(0.1)
        [row] = rows
    finally:
        await runner.cleanup()
    assert row["status"] == "ok"
    assert OLD not in row["text"] and NEW not in row["text"], row["text"]
    assert row["text"].count("[REDACTED]") == 2


@pytest.mark.slow
async def test_sighup_rereads_a_rotated_file_secret(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(OLD)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "store": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
        "rules": {"dirs": [str(write_rules(tmp_path / "rules", "rules: []\n"))]},
        "intakes": {"alertmanager": {"auth": {"bearer_token": {"file": str(token_file)}}}},
        "secrets": {"reload_interval": 0},
        "sinks": {"console": {"enabled": False}},
        "server": {"drain_seconds": "1s"},
    }))
    port = free_port()
    with responder_daemon(path, port, tmp_path / "daemon.log") as daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        async with aiohttp.ClientSession() as session:
            async def post(token: str) -> int:
                async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager",
                                        json=am_payload(am_alert("Rotated")), headers=bearer(token)) as resp:
                    return resp.status

            assert await post(OLD) == 200
            token_file.write_text(NEW)
            await asyncio.sleep(0.5)
            assert await post(NEW) == 401, "no reload without SIGHUP when the interval is off"
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            await wait_accepted(post, NEW, timeout=5)
            assert await post(OLD) == 401
        assert daemon.proc.poll() is None, "SIGHUP reloads, it does not stop the daemon"
