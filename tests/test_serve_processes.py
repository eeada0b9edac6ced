"""`serve --processes N` and `server.event_loop`, run as real processes on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from responder.store import open_store
from tests.support.alerts import am_alert, am_payload
from tests.support.processes import REPO, ManagedProcess, daemon_env, responder_daemon, wait_http
from tests.support.services import free_port

pytestmark = pytest.mark.slow

WEBHOOKS = re.compile(r'^responder_webhook_requests_total\{code="200",intake="alertmanager"\} ([\d.]+)$', re.M)


def write_config(tmp_path: Path, store_url: str, **server: Any) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    config = {
        "store": {"url": store_url},
        "rules": {"dirs": [str(rules)]},
        "sinks": {"console": {"enabled": False}},
        "server": {"drain_seconds": "1s", **server},
        "logging": {"level": "info"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def post_fresh_connections(port: int, count: int) -> list[int]:
    """Each webhook on a new connection, so the kernel picks a process for each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async def post(n: int) -> int:
            # A group of its own per webhook: one incident each.
            payload = am_payload(am_alert(f"Proc{n}", labels={"pod": f"pod-{n}"}), group_key=f"{{}}:{{n={n}}}")
            async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager", json=payload) as resp:
                return resp.status
        return list(await asyncio.gather(*(post(n) for n in range(count))))


async def webhook_counts(port: int, scrapes: int) -> set[float]:
    """`/metrics` of whichever process answers each scrape: every process counts only what it answered."""
    seen: set[float] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(scrapes):
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                found = WEBHOOKS.search(await resp.text())
                seen.add(float(found.group(1)) if found else 0.0)
    return seen


@contextlib.asynccontextmanager
async def two_processes(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[ManagedProcess, int, list[int]]]:
    """`serve --processes 2`, ready: the parent, the port and the two processes' pids."""
    port = free_port()
    daemon = responder_daemon(write_config(tmp_path, pg_url), port, tmp_path / "serve.log", args=["--processes", "2"])
    with daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        assert daemon.proc is not None
        workers = children(daemon.proc.pid)
        assert len(workers) == 2
        yield daemon, port, workers


async def test_processes_share_the_port_and_the_work_and_stop_together(tmp_path: Path, pg_url: str) -> None:
    async with two_processes(tmp_path, pg_url) as (daemon, port, workers):
        # An odd number of webhooks, so the two processes' counts always differ and both show up in the set.
        assert await post_fresh_connections(port, 61) == [200] * 61
        counts = await webhook_counts(port, 30)
        assert len(counts) == 2, f"one process answered every scrape: {counts}"
        assert sum(counts) == 61
        store = await open_store(pg_url)
        try:
            assert len(await store.list_incidents()) == 61
        finally:
            await store.close()
        assert daemon.stop() == 0
    for pid in workers:
        assert not alive(pid), f"process {pid} outlived the SIGTERM"
    assert daemon.output().count("event loop asyncio") == 2


async def test_one_process_dying_stops_the_others_and_fails(tmp_path: Path, pg_url: str) -> None:
    async with two_processes(tmp_path, pg_url) as (daemon, _, (first, second)):
        assert daemon.proc is not None
        os.kill(first, signal.SIGKILL)
        assert await asyncio.to_thread(daemon.proc.wait, 30) != 0
        assert not alive(second)
    assert "stopping the others" in daemon.output()


async def test_uvloop_serves_webhooks(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    config = write_config(tmp_path, pg_url, event_loop="uvloop")
    with responder_daemon(config, port, tmp_path / "serve.log") as daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        assert await post_fresh_connections(port, 5) == [200] * 5
    assert "event loop uvloop" in daemon.output()


@pytest.mark.parametrize(("config", "message"), [
    ({"store": {"url": "sqlite:///r.db"}, "server": {"processes": 2}},
     "server.processes: more than one process needs a PostgreSQL store"),
    ({"store": {"url": "postgresql://127.0.0.1/test"}, "server": {"processes": 2},
      "mitigations": {"mode": "enforce"}},
     "server.processes: more than one process in enforce mode needs mitigations.redis"),
])
def test_check_refuses_processes_that_cannot_share_the_work(tmp_path: Path, config: dict[str, Any],
                                                            message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "responder", "check", "--config", str(path)],
                            capture_output=True, text=True, env=daemon_env({"COLUMNS": "300"}), cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert any(str(path) in line and message in line for line in result.stderr.splitlines()), result.stderr


def test_serve_processes_flag_is_checked_like_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    proc = ManagedProcess([sys.executable, "-m", "responder", "serve", "--config", str(config), "--processes", "2"],
                          tmp_path / "serve.log", env=daemon_env({"COLUMNS": "300"}), cwd=REPO)
    with proc:
        assert proc.proc is not None
        assert proc.proc.wait(timeout=60) == 2
    assert "server.processes: more than one process needs a PostgreSQL store" in proc.output()
