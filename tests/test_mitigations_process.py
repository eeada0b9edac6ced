"""Mitigations across real daemon processes: two replicas sharing PostgreSQL and Redis act once on a
storm, and a daemon killed in the middle of an action does not act again when its job runs again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from responder.store import open_store
from tests.fakes.kube_api import FakeKubeAPI
from tests.support.admin import admin_endpoint
from tests.support.alerts import am_payload
from tests.support.processes import responder_daemon, wait_http
from tests.support.services import free_port
from tests.test_daemon_process import wait_all_processed
from tests.test_mitigations_guard import alerts

pytestmark = pytest.mark.slow

RULES = """
rules:
  - name: api-down
    match: ['alertname="ApiDown"']
    mitigations:
      - id: fallback
        type: http.request
        params: {target: app, path: /admin/fallback/enable, timeout: 20}
"""

# One incident per alert ('...'), so both replicas decide about the same target many times at once.
RESTART = """
rules:
  - name: api-down
    match: ['alertname="ApiDown"']
    group_by: ['...']
    mitigations:
      - id: restart
        type: kubernetes.rollout_restart
        params: {target: prod, namespace: "{{ labels.namespace }}", name: "{{ labels.deployment }}"}
"""


def write_config(tmp_path: Path, store_url: str, admin_url: str, *, rules_text: str = RULES,
                 kube: dict[str, Any] | None = None, **mitigations: Any) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "api.yaml").write_text(rules_text)
    config = {
        "store": {"url": store_url, "lease_seconds": "2s", "poll_interval": "100ms"},
        "pipeline": {"workers": 16, "retry_initial": "100ms", "retry_max": "1s"},
        "rules": {"dirs": [str(rules)]},
        "server": {"drain_seconds": "1s"},
        "targets": {"http": {"app": {"url": admin_url}}, "kubernetes": {"prod": kube or {"url": "http://127.0.0.1:1"}}},
        "sinks": {"console": {"enabled": False}},
        "mitigations": {"mode": "enforce", **mitigations},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def post(port: int, batch: list[dict[str, Any]], per_request: int = 10) -> None:
    async with aiohttp.ClientSession() as session:
        async def one(chunk: list[dict[str, Any]]) -> int:
            async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager", json=am_payload(*chunk)) as r:
                return r.status
        chunks = [batch[i:i + per_request] for i in range(0, len(batch), per_request)]
        assert await asyncio.gather(*(one(c) for c in chunks)) == [200] * len(chunks)


async def outcomes(store_url: str) -> list[tuple[str, str | None]]:
    store = await open_store(store_url)
    try:
        async with store.db.read() as conn:
            return [(r["outcome"], r["guard"]) for r in await conn.fetch("SELECT * FROM actions ORDER BY id")]
    finally:
        await store.close()


async def test_two_daemons_sharing_postgresql_and_redis_restart_once(tmp_path: Path, pg_url: str, redis_url: str,
                                                                     redis_prefix: str) -> None:
    async with FakeKubeAPI() as kube:
        kube.add_deployment("prod", "api")
        config = write_config(tmp_path, pg_url, "http://127.0.0.1:1", rules_text=RESTART, kube=kube.target(),
                              redis={"url": {"env": "LOCK_REDIS_URL"}, "key_prefix": redis_prefix})
        ports = [free_port(), free_port()]
        daemons = [responder_daemon(config, p, tmp_path / f"d{i}.log", extra_env={"LOCK_REDIS_URL": redis_url})
                   .start() for i, p in enumerate(ports)]
        store = await open_store(pg_url)
        try:
            for port, daemon in zip(ports, daemons, strict=True):
                await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
            storm = alerts(500)
            await asyncio.gather(post(ports[0], storm[0::2]), post(ports[1], storm[1::2]))
            await wait_all_processed(store, 500, timeout=120)
            async with store.db.read() as conn:
                owners = await conn.fetch("SELECT DISTINCT lease_owner FROM jobs WHERE queue = 'pipeline'")
        finally:
            for daemon in daemons:
                daemon.stop()
            await store.close()
        assert [(w.method, w.path) for w in kube.writes()] == [
            ("PATCH", "/apis/apps/v1/namespaces/prod/deployments/api")]
        assert len({o["lease_owner"].rsplit(":", 1)[0] for o in owners}) == 2, "both replicas decided"
        decided = await outcomes(pg_url)
        assert len(decided) == 500 and decided.count(("executing", None)) == 0
        assert sorted({o for o, _ in decided}) == ["executed", "skipped"]
        assert [o for o, _ in decided].count("executed") == 1
        assert {g for o, g in decided if o == "skipped"} <= {"cooldown", "lock"}


async def test_killed_mid_action_does_not_act_again_after_restart(tmp_path: Path, store_url: str) -> None:
    async with admin_endpoint(delay=3.0) as endpoint:
        config = write_config(tmp_path, store_url, endpoint.url)
        port = free_port()
        first = responder_daemon(config, port, tmp_path / "first.log").start()
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=first)
            await post(port, alerts(1))
            async with asyncio.timeout(10):
                while not endpoint.calls:
                    await asyncio.sleep(0.05)
        finally:
            first.kill9()  # while the admin call is still in flight
        assert await outcomes(store_url) == [("executing", None)]
        store = await open_store(store_url)
        try:
            with responder_daemon(config, port, tmp_path / "second.log") as second:
                await wait_http(f"http://127.0.0.1:{port}/readyz", proc=second)
                await wait_all_processed(store, 1)
        finally:
            await store.close()
        assert len(endpoint.calls) == 1
        assert await outcomes(store_url) == [("executing", None), ("skipped", "duplicate")]
