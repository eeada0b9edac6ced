"""Unauthenticated resource exhaustion against the real daemon process, on loopback only.

1,000 connections that never send a request head, plus 50 PagerDuty requests that claim a signature and
stall in the middle of a 1.9 MB body: the daemon's memory grows by at most 20 MB and comes back, every
attacking connection is closed by the daemon within its timeouts, and authenticated Alertmanager
deliveries keep a p99 of at most 100 ms meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.alerts import am_alert, am_payload
from tests.support.processes import responder_daemon, wait_http
from tests.support.services import free_port

pytestmark = pytest.mark.slow

IDLE = 1000
STALLED = 50
STALLED_BYTES = 1_900_000
TOKEN = "resource-test-token-0123"
HEADER_TIMEOUT = 10.0
UNVERIFIED_READ_TIMEOUT = 8.0
# Deliveries measured while every attacking connection is held.
MEASURE_SECONDS = 4.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def write_config(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "rules.yaml").write_text("rules: []\n")
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 'responder.db'}", "sqlite_synchronous": "normal"},
        "rules": {"dirs": [str(rules)]},
        "server": {"header_timeout": f"{HEADER_TIMEOUT}s", "unverified_read_timeout": f"{UNVERIFIED_READ_TIMEOUT}s",
                   "keepalive_timeout": "5s", "drain_seconds": "1s"},
        "intakes": {"alertmanager": {"auth": {"bearer_token": {"env": "RESOURCE_AM_TOKEN"}}},
                    "pagerduty": {"auth": {"signing_secrets": [{"env": "RESOURCE_PD_SECRET"}]}}},
        "sinks": {"console": {"enabled": False}},
        "logging": {"level": "warning"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """Half of them send nothing, half a fragment of a request line (a slowloris)."""
    sockets = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(b"POST /webhooks/alertmanager HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(sock)
    return sockets


def stalled_bodies(port: int, count: int) -> list[socket.socket]:
    """Forged signatures and a body that stops 100 kB short of its Content-Length."""
    sockets = []
    head = (f"POST /webhooks/pagerduty HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-PagerDuty-Signature: v1={'ab' * 32}\r\nContent-Length: {STALLED_BYTES}\r\n\r\n").encode()
    chunk = b'{"event": {"data": "' + b"x" * (STALLED_BYTES - 100_000)
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(head + chunk)  # as much as the socket takes; the rest is never sent
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


async def deliveries(port: int, seconds: float) -> list[float]:
    """Authenticated Alertmanager deliveries, one after another, for `seconds`: their latencies."""
    latencies = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        i = 0
        while time.monotonic() < deadline:
            body = json.dumps(am_payload(am_alert(f"Load{i % 20}", labels={"pod": f"p{i}"})))
            started = time.monotonic()
            async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager", data=body,
                                    headers=headers | {"Content-Type": "application/json"}) as resp:
                assert resp.status == 200, await resp.text()
            latencies.append((time.monotonic() - started) * 1000)
            i += 1
            await asyncio.sleep(0.02)
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_idle_connections_and_stalled_bodies_cost_bounded_memory(tmp_path: Path) -> None:
    port = free_port()
    daemon = responder_daemon(write_config(tmp_path), port, tmp_path / "daemon.log",
                              extra_env={"RESOURCE_AM_TOKEN": TOKEN, "RESOURCE_PD_SECRET": "pd-secret-0123456"})
    with daemon:
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc=daemon)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        await deliveries(port, 2.0)  # warm up: imports, caches, the store
        baseline = rss_mb(pid)
        loop = asyncio.get_running_loop()
        attack_started = time.monotonic()
        idle = await loop.run_in_executor(None, idle_connections, port, IDLE)
        stalled = await loop.run_in_executor(None, stalled_bodies, port, STALLED)
        setup = time.monotonic() - attack_started
        assert setup + MEASURE_SECONDS < UNVERIFIED_READ_TIMEOUT, f"the attack took {setup:.1f}s to set up"
        peak = rss_mb(pid)

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            latencies = await deliveries(port, MEASURE_SECONDS)
        finally:
            sampler.cancel()
        # Every attacking connection is closed by the daemon itself, within its timeouts.
        await asyncio.sleep(max(0.0, setup + HEADER_TIMEOUT + 1 - (time.monotonic() - attack_started)))
        still_open = [s for s in idle + stalled if not closed_by_server(s)]
        for sock in idle + stalled:
            sock.close()
        await asyncio.sleep(1.0)
        after = rss_mb(pid)
        log = daemon.output()

    report = (f"attack set up in {setup:.1f}s; baseline {baseline:.1f} MB, peak {peak:.1f} MB"
              f" (+{peak - baseline:.1f}), after {after:.1f} MB (+{after - baseline:.1f});"
              f" {len(latencies)} deliveries during the attack,"
              f" p50 {sorted(latencies)[len(latencies) // 2]:.1f} ms, p99 {p99(latencies):.1f} ms")
    print(report)
    assert not still_open, f"{len(still_open)} attacking connections still open: {report}"
    assert peak - baseline <= 20, report
    assert after - baseline <= 5, report
    assert len(latencies) >= 20 and p99(latencies) <= 100, report
    assert "Traceback" not in log, log[-3000:]
