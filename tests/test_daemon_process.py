"""The daemon as a real process: kill -9 mid-work, SIGTERM under load, two replicas on one PostgreSQL, a real
Alertmanager."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from responder.store import Store, open_store
from tests.support.alertmanager import Alertmanager
from tests.support.alerts import am_alert, am_payload
from tests.support.processes import ManagedProcess, responder_daemon, wait_http
from tests.support.services import free_port

pytestmark = pytest.mark.slow

# One incident per alert (`group_by: ['...']`): each alert's job must run exactly once.
SLOW_RULES = """
rules:
  - name: slow
    match: ['alertname=~"Crash.*"']
    group_by: ['...']
    collectors:
      - type: test.sleep
        params: {seconds: 2, label: "gathered"}
"""


def write_config(tmp_path: Path, store_url: str, **extra: Any) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "slow.yaml").write_text(SLOW_RULES)
    config: dict[str, Any] = {
        "store": {"url": store_url, "lease_seconds": "2s", "poll_interval": "100ms"},
        "pipeline": {"workers": 8, "retry_initial": "100ms", "retry_max": "1s"},
        "rules": {"dirs": [str(rules)]},
        "plugins": ["tests.support.plugins"],
        "server": {"drain_seconds": "1s"},
        "logging": {"level": "info"},
    }
    for key, value in extra.items():
        config.setdefault(key, {}).update(value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def post_alerts(port: int, names: list[str]) -> list[int]:
    async with aiohttp.ClientSession() as session:
        async def post(name: str) -> int:
            payload = am_payload(am_alert(name, labels={"pod": name}))
            async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager", json=payload) as resp:
                return resp.status
        return list(await asyncio.gather(*(post(n) for n in names)))


async def wait_all_processed(store: Store, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with store.db.transaction() as conn:
            done = int(await conn.fetchval("SELECT COUNT(*) FROM incidents WHERE processed_at IS NOT NULL"))
        if done >= expected:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{expected} incidents processed")
        await asyncio.sleep(0.2)


async def assert_processed_exactly_once(store: Store, expected: int) -> list[Any]:
    async with store.db.transaction() as conn:
        incidents = await conn.fetch("SELECT id, processed_at FROM incidents ORDER BY id")
        jobs = await conn.fetch("SELECT incident_id, status, attempts, lease_owner FROM jobs WHERE queue = 'pipeline'")
        evidence = await conn.fetch("SELECT incident_id, COUNT(*) AS n FROM evidence GROUP BY incident_id")
    assert len(incidents) == expected
    assert all(i["processed_at"] is not None for i in incidents)
    assert sorted(j["incident_id"] for j in jobs) == [i["id"] for i in incidents]  # one job each
    assert {j["status"] for j in jobs} == {"done"}
    assert {e["incident_id"]: e["n"] for e in evidence} == {i["id"]: 1 for i in incidents}  # results kept once
    return list(jobs)


async def test_kill_9_after_2xx_then_restart_processes_every_alert_exactly_once(
        tmp_path: Path, store_url: str) -> None:
    config = write_config(tmp_path, store_url, pipeline={"workers": 32})
    port = free_port()
    names = [f"Crash{i}" for i in range(20)]
    first = responder_daemon(config, port, tmp_path / "first.log").start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=first)
        assert await post_alerts(port, names) == [200] * 20
        await asyncio.sleep(0.7)  # every job is claimed and sleeping in its collector now
    finally:
        first.kill9()
    store = await open_store(store_url)
    try:
        async with store.db.transaction() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM incidents WHERE processed_at IS NOT NULL") == 0
        with responder_daemon(config, port, tmp_path / "second.log") as second:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=second)
            await wait_all_processed(store, 20)
        jobs = await assert_processed_exactly_once(store, 20)
        assert all(j["attempts"] == 2 for j in jobs), "each job was interrupted once, then finished once"
    finally:
        await store.close()


# Quick jobs finish within the shutdown's grace period, slow ones are still gathering when it ends.
SHUTDOWN_RULES = """
rules:
  - name: quick
    match: ['alertname=~"Quick.*"']
    group_by: ['...']
    collectors:
      - type: test.sleep
        params: {seconds: 0.3, label: "gathered"}
  - name: slow
    match: ['alertname=~"Slow.*"']
    group_by: ['...']
    collectors:
      - type: test.sleep
        params: {seconds: 5, label: "gathered"}
"""


def shutdown_problems(log: str) -> list[str]:
    """Lines of a daemon's log that a clean shutdown must not write: errors, and any deadlock or closed
    database met on the way (logged at debug level while a transaction is retried)."""
    return [line for line in log.splitlines()
            if re.search(r" (ERROR|CRITICAL) ", line) or re.search(r"deadlock|closed|closing", line, re.IGNORECASE)]


async def test_sigterm_under_load_on_postgresql_stops_cleanly_and_the_next_start_runs_the_rest_once(
        tmp_path: Path, pg_url: str) -> None:
    # Leases renewed every 2s, so heartbeats run while jobs finish, and the slow jobs are renewed too.
    config = write_config(tmp_path, pg_url, pipeline={"workers": 32}, store={"lease_seconds": "6s"},
                          logging={"level": "debug"})
    (tmp_path / "rules" / "slow.yaml").write_text(SHUTDOWN_RULES)
    port = free_port()
    slow, quick = [f"Slow{i}" for i in range(8)], [f"Quick{i}" for i in range(100)]
    names = slow + quick
    store = await open_store(pg_url)
    try:
        first = responder_daemon(config, port, tmp_path / "first.log").start()
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=first)
            # The slow jobs first: a quarter of the workers are on them when the quick ones pour in.
            assert await post_alerts(port, slow) == [200] * len(slow)
            assert await post_alerts(port, quick) == [200] * len(quick)
            await wait_all_processed(store, 20)
        finally:
            code = first.stop(timeout=30)
        assert code == 0, first.output()[-3000:]
        assert shutdown_problems(first.output()) == []
        assert "handed 8 unfinished job(s) back" in first.output(), "the slow jobs were cut short"
        async with store.db.read() as conn:
            assert await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE status = 'running'") == 0, "all handed back"
        with responder_daemon(config, port, tmp_path / "second.log") as second:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=second)
            await wait_all_processed(store, len(names))
        assert second.proc is not None and second.proc.returncode == 0
        assert shutdown_problems(second.output()) == []
        jobs = await assert_processed_exactly_once(store, len(names))
        assert all(j["attempts"] == 1 for j in jobs), "a job handed back at shutdown ran once, on the next start"
    finally:
        await store.close()


async def test_two_daemons_sharing_postgresql_process_each_alert_once(tmp_path: Path, pg_url: str) -> None:
    # A lease long enough that a loaded machine never lets one expire: every job must then run exactly once.
    config = write_config(tmp_path, pg_url, pipeline={"workers": 16}, store={"lease_seconds": "30s"})
    ports = [free_port(), free_port()]
    daemons = [responder_daemon(config, p, tmp_path / f"d{i}.log").start() for i, p in enumerate(ports)]
    store = await open_store(pg_url)
    try:
        for port, daemon in zip(ports, daemons, strict=True):
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        names = [f"Crash{i}" for i in range(200)]
        statuses = await asyncio.gather(post_alerts(ports[0], names[0::2]), post_alerts(ports[1], names[1::2]))
        assert [s for part in statuses for s in part] == [200] * 200
        await wait_all_processed(store, 200, timeout=120)
        jobs = await assert_processed_exactly_once(store, 200)
        owners = {j["lease_owner"].rsplit(":", 1)[0] for j in jobs}
        assert len(owners) == 2, "both replicas took work from the shared queue"
        assert all(j["attempts"] == 1 for j in jobs)
    finally:
        for daemon in daemons:
            daemon.stop()
        await store.close()


async def test_real_alertmanager_delivers_and_resolves(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'responder.db'}"
    token = "am-e2e-token-1234"
    config = write_config(tmp_path, store_url)
    raw = yaml.safe_load(config.read_text())
    raw["intakes"] = {"alertmanager": {"auth": {"bearer_token": {"env": "E2E_AM_TOKEN"}}}}
    raw["rules"]["dirs"] = [str(tmp_path / "rules")]
    (tmp_path / "rules" / "slow.yaml").write_text(SLOW_RULES.replace('"Crash.*"', '"Crash.*|DiskFull"'))
    config.write_text(yaml.safe_dump(raw))
    port = free_port()
    daemon: ManagedProcess = responder_daemon(config, port, tmp_path / "daemon.log",
                                              extra_env={"E2E_AM_TOKEN": token})
    with daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        async with Alertmanager(tmp_path / "am", f"http://127.0.0.1:{port}/webhooks/alertmanager",
                                bearer_token=token) as am:
            labels = {"alertname": "DiskFull", "severity": "critical", "namespace": "prod"}
            am.amtool_alert(labels, annotations={"summary": "disk 97% full"})
            store = await open_store(store_url)
            try:
                await wait_all_processed(store, 1, timeout=30)
                [incident] = await store.list_incidents()
                assert incident.alertname == "DiskFull" and incident.rule == "slow"
                assert incident.annotations["summary"] == "disk 97% full"
                assert [e["title"] for e in await store.evidence(incident.id)] == ["gathered 2s"]

                am.amtool_alert(labels, end=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1)))
                deadline = time.monotonic() + 30
                while (await store.get_incident(incident.id)).status.value != "resolved":  # type: ignore[union-attr]
                    assert time.monotonic() < deadline, "Alertmanager's resolved notification never closed it"
                    await asyncio.sleep(0.2)
                assert len(await store.list_incidents()) == 1
            finally:
                await store.close()
    log = daemon.output()
    assert "incident 1 (DiskFull) processed" in log and "incident 1 (DiskFull) resolved" in log
