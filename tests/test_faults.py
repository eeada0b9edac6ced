"""Fault injection against the daemon as a real process: kill -9 mid-burst, a PostgreSQL crash,
Redis gone, and clients that are slow, endless or idle. Whatever we inject, nothing acknowledged is
lost, nothing is done twice, and the server keeps answering."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from responder.store import Store, open_store
from tests.conftest import write_rules
from tests.fakes.slack_api import FakeSlack
from tests.support.alerts import am_alert, am_payload
from tests.support.pgcluster import PgCluster
from tests.support.processes import ManagedProcess, responder_daemon, wait_http
from tests.support.services import free_port
from tests.test_slack import LIGHT, assert_exactly_once_in_order, fire_many, settled
from tests.test_slack import TOKEN as SLACK_TOKEN

pytestmark = pytest.mark.slow

RECORD_RULES = """
rules:
  - name: burst
    match: ['alertname="Burst"']
    mode: enforce
    mitigations:
      - type: test.record
        params: {target: "{{ labels.pod }}"}
"""


def write_config(tmp_path: Path, store_url: str, **extra: dict[str, Any]) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "burst.yaml").write_text(RECORD_RULES)
    config: dict[str, Any] = {
        "store": {"url": store_url, "lease_seconds": "3s", "poll_interval": "100ms"},
        "pipeline": {"workers": 8, "retry_initial": "100ms", "retry_max": "1s"},
        "rules": {"dirs": [str(rules)]},
        "plugins": ["tests.support.plugins"],
        # The burst's alerts started hours ago and are many: lift the age, rate and cooldown limits so
        # each one is acted on exactly once.
        "mitigations": {"mode": "enforce", "max_alert_age": 864000, "max_per_hour": 100000, "max_per_day": 100000,
                        "cooldown": 0},
        "sinks": {"console": {"enabled": False}},
        "server": {"drain_seconds": "1s"},
        "logging": {"level": "warning"},
    }
    for key, value in extra.items():
        config.setdefault(key, {}).update(value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def burst_payload(pod: str) -> dict[str, Any]:
    return am_payload(am_alert("Burst", labels={"pod": pod}), group_key=f'{{}}:{{pod="{pod}"}}')


async def post(session: aiohttp.ClientSession, port: int, payload: Any, **kwargs: Any) -> int:
    async with session.post(f"http://127.0.0.1:{port}/webhooks/alertmanager", json=payload, **kwargs) as resp:
        await resp.read()
        return resp.status


async def send_until_killed(port: int, pods: list[str], acked: set[str], concurrency: int = 16) -> set[str]:
    """Post one alert per pod, adding to `acked` (as they come, so a test can watch) the pods whose webhook
    was acknowledged (2xx). Connection errors (the daemon died under us) are unacknowledged, as they would be
    for Alertmanager."""
    todo = list(pods)

    async def sender(session: aiohttp.ClientSession) -> None:
        while todo:
            pod = todo.pop()
            try:
                if await post(session, port, burst_payload(pod)) == 200:
                    acked.add(pod)
            except (aiohttp.ClientError, TimeoutError):
                return

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))
    return acked


async def wait_processed(store: Store, expected: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with store.db.read() as conn:
            done = int(await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE queue = 'pipeline' AND status = 'done'"))
        if done >= expected:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {done}/{expected} pipeline jobs done")
        await asyncio.sleep(0.2)


async def incidents_by_pod(store: Store) -> dict[str, list[int]]:
    async with store.db.read() as conn:
        rows = await conn.fetch("SELECT id, labels FROM incidents ORDER BY id")
    by_pod: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        by_pod[json.loads(row["labels"])["pod"]].append(int(row["id"]))
    return by_pod


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[Store]:
    store = await open_store(url)
    try:
        yield store
    finally:
        await store.close()


async def test_kill_9_at_random_moments_during_a_burst_loses_and_repeats_nothing(
        tmp_path: Path, store_url: str) -> None:
    action_log = tmp_path / "actions.log"
    env = {"RESPONDER_TEST_ACTION_LOG": str(action_log)}
    config = write_config(tmp_path, store_url)
    port = free_port()
    pods = [f"pod-{i}" for i in range(1000)]
    acked: set[str] = set()
    rng = random.Random()
    for round_ in range(3):
        # Each round kills a fresh daemon at a random moment of a burst of whatever is not yet acknowledged.
        daemon = responder_daemon(config, port, tmp_path / f"d{round_}.log", extra_env=env).start()
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
            todo = [p for p in pods if p not in acked]
            round_acked: set[str] = set()
            sending = asyncio.create_task(send_until_killed(port, todo, round_acked))
            # Kill at a random point of the burst, measured in acknowledged alerts rather than seconds,
            # so the kill lands mid-burst however fast the machine is.
            kill_at = int(len(todo) * rng.uniform(0.1, 0.6))
            async with asyncio.timeout(60):
                while len(round_acked) < kill_at and not sending.done():
                    await asyncio.sleep(0.005)
        finally:
            daemon.kill9()
        acked |= await sending
    assert 0 < len(acked) < len(pods), "the kills landed mid-burst"

    with responder_daemon(config, port, tmp_path / "last.log", extra_env=env) as daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        # Alertmanager re-sends what it has not seen acknowledged, and re-sends the rest on its next cycle.
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(post(session, port, burst_payload(p)) for p in pods))
        assert set(statuses) == {200}
        async with opened(store_url) as store:
            await wait_processed(store, len(pods))
            by_pod = await incidents_by_pod(store)
            async with store.db.read() as conn:
                jobs = await conn.fetch("SELECT incident_id, status FROM jobs WHERE queue = 'pipeline'")
                actions = await conn.fetch("SELECT incident_id, outcome, guard FROM actions"
                                           " WHERE action = 'test.record' ORDER BY id")
    assert sorted(by_pod) == sorted(pods)
    assert all(len(ids) == 1 for ids in by_pod.values()), "one incident per alert"
    incident_pod = {ids[0]: pod for pod, ids in by_pod.items()}
    assert collections.Counter(j["incident_id"] for j in jobs) == {i: 1 for i in incident_pod}
    assert {j["status"] for j in jobs} == {"done"}
    # One decision to act per incident; a re-run job that finds it records a skip. An action whose daemon
    # died while it ran stays `executing` (a person checks it) and is never started again.
    acting = [a for a in actions if a["outcome"] != "skipped"]
    assert collections.Counter(a["incident_id"] for a in acting) == {i: 1 for i in incident_pod}
    assert {a["guard"] for a in actions if a["outcome"] == "skipped"} <= {"duplicate"}
    outcomes = {int(a["incident_id"]): a["outcome"] for a in acting}
    interrupted = [i for i, outcome in outcomes.items() if outcome == "executing"]
    assert set(outcomes.values()) <= {"executed", "executing"}
    assert len(interrupted) <= 3 * 8, "only actions running at one of the three kills can be interrupted"
    executions = collections.Counter(action_log.read_text().splitlines())
    assert not {line: n for line, n in executions.items() if n > 1}, "an action ran twice"
    assert set(executions) <= {f"{i} {pod}" for i, pod in incident_pod.items()}
    executed = {f"{i} {incident_pod[i]}" for i, outcome in outcomes.items() if outcome == "executed"}
    assert executed <= set(executions), "every action recorded as executed did run"


async def test_postgresql_crash_during_a_burst_gets_503_then_recovers_without_loss(tmp_path: Path) -> None:
    with PgCluster() as pg:
        config = write_config(tmp_path, pg.url, store={"connect_timeout": "2s"})
        port = free_port()
        statuses: dict[str, list[int]] = collections.defaultdict(list)
        acked: set[str] = set()
        stop_sending = asyncio.Event()

        async def sender(session: aiohttp.ClientSession, worker: int) -> None:
            n = 0
            while not stop_sending.is_set():
                pod = f"pod-{worker}-{n}"
                n += 1
                try:
                    status = await post(session, port, burst_payload(pod))
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                statuses[pod].append(status)
                if status == 200:
                    acked.add(pod)
                await asyncio.sleep(0.01)

        with responder_daemon(config, port, tmp_path / "daemon.log",
                              extra_env={"RESPONDER_TEST_ACTION_LOG": str(tmp_path / "a.log")}) as daemon:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
                senders = [asyncio.create_task(sender(session, w)) for w in range(8)]
                await asyncio.sleep(1.0)
                before = len(acked)
                await asyncio.to_thread(pg.stop)
                down_since = time.monotonic()
                await asyncio.sleep(2.0)
                refused_while_down = {p: s for p, s in statuses.items() if s and s[-1] == 503}
                await asyncio.to_thread(pg.start)
                up_at = time.monotonic()
                await asyncio.sleep(3.0)
                stop_sending.set()
                await asyncio.gather(*senders)
            assert before > 0
            assert refused_while_down, f"no 503 while PostgreSQL was down for {up_at - down_since:.1f}s"
            assert {s for ss in statuses.values() for s in ss} <= {200, 503}, "down means 503, never 500"
            async with aiohttp.ClientSession() as session:
                assert await post(session, port, burst_payload("after-recovery")) == 200
            acked.add("after-recovery")
            async with opened(pg.url) as store:
                by_pod = await incidents_by_pod(store)
                await wait_processed(store, len(by_pod))
        assert acked <= set(by_pod), f"acknowledged but lost: {sorted(acked - set(by_pod))[:10]}"
        assert all(len(ids) == 1 for ids in by_pod.values())


REDIS_RULES = """
rules:
  - name: cache
    match: ['alertname="CacheDown"']
    mode: enforce
    collectors:
      - {type: redis.ping, id: ping, params: {target: cache}}
    mitigations:
      - {type: test.record, params: {target: "{{ labels.pod }}"}}
"""


async def test_redis_unreachable_collectors_report_errors_locks_fail_closed_ingestion_continues(
        tmp_path: Path, store_url: str) -> None:
    dead = free_port()  # nothing listens here
    config = write_config(tmp_path, store_url, targets={"redis": {"cache": {"url": {"env": "CACHE_REDIS_URL"}}}},
                          mitigations={"redis": {"target": "cache", "timeout": "500ms"}})
    (tmp_path / "rules" / "cache.yaml").write_text(REDIS_RULES)
    port = free_port()
    action_log = tmp_path / "a.log"
    env = {"RESPONDER_TEST_ACTION_LOG": str(action_log), "CACHE_REDIS_URL": f"redis://127.0.0.1:{dead}/0"}
    with responder_daemon(config, port, tmp_path / "daemon.log", extra_env=env) as daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*(
                post(session, port, am_payload(am_alert("CacheDown", labels={"pod": f"pod-{i}"}),
                                               group_key=f"g{i}")) for i in range(20)))
        assert statuses == [200] * 20
        async with opened(store_url) as store:
            await wait_processed(store, 20)
            async with store.db.read() as conn:
                evidence = await conn.fetch("SELECT status FROM evidence WHERE collector = 'redis.ping'")
                actions = await conn.fetch("SELECT outcome, guard FROM actions WHERE action = 'test.record'")
    assert [e["status"] for e in evidence] == ["error"] * 20
    assert [(a["outcome"], a["guard"]) for a in actions] == [("skipped", "lock")] * 20
    assert not action_log.exists(), "nothing runs without its lock"


# --- slow, endless and idle clients ----------------------------------------------------------------


@asynccontextmanager
async def guarded_daemon(tmp_path: Path) -> AsyncIterator[int]:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'r.db'}",
                          server={"read_timeout": "1s", "max_body_bytes": 64 * 1024})
    port = free_port()
    daemon: ManagedProcess = responder_daemon(config, port, tmp_path / "daemon.log",
                                              extra_env={"RESPONDER_TEST_ACTION_LOG": str(tmp_path / "a.log")})
    with daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        yield port


async def read_status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    return int(line.split()[1])


def request_head(port: int, extra: str) -> bytes:
    return (f"POST /webhooks/alertmanager HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


async def trickle(port: int) -> tuple[int, float]:
    """Headers, then one byte of a 10 kB body every 200 ms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(request_head(port, "Content-Length: 10000\r\n"))

    async def drip() -> None:
        for _ in range(10000):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)

    dripping = asyncio.create_task(drip())
    try:
        status = await asyncio.wait_for(read_status(reader), 10)
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
    return status, time.monotonic() - started


async def endless(port: int) -> tuple[int, int]:
    """A chunked body that never ends; returns the status and how many bytes we got to send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_head(port, "Transfer-Encoding: chunked\r\n"))
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()

    flooding = asyncio.create_task(flood())
    try:
        status = await asyncio.wait_for(read_status(reader), 10)
    finally:
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        writer.close()
    return status, sent


async def test_slow_endless_and_idle_clients_do_not_starve_others(tmp_path: Path) -> None:
    async with guarded_daemon(tmp_path) as port:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
        for _, writer in idle[::2]:
            writer.write(b"POST /webhooks/alertmanager HTTP/1.1\r\n")  # half a request, then silence
        try:
            abusers = asyncio.gather(*(trickle(port) for _ in range(5)), *(endless(port) for _ in range(5)))
            latencies = []
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                for i in range(40):
                    started = time.monotonic()
                    assert await post(session, port, burst_payload(f"pod-{i}")) == 200
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.02)
            results = await abusers
        finally:
            for _, writer in idle:
                writer.close()
    trickled, floods = results[:5], results[5:]
    assert all(status == 408 and 0.9 < took < 3 for status, took in trickled), trickled
    assert all(status == 413 for status, _ in floods), floods
    assert all(sent < 16 * 1024 * 1024 for _, sent in floods), "the server stopped reading an endless body"
    # Starved requests would wait for the abusers' timeouts (1 s and more); a loaded CI machine's fsync and
    # scheduling alone stay well below that.
    assert max(latencies) < 0.9, f"other requests waited up to {max(latencies):.2f}s"


# --- Slack failing and slow, with a restart ------------------------------------------------------


async def test_slack_errors_rate_limits_and_timeouts_with_kill_9_deliver_exactly_once(tmp_path: Path) -> None:
    async with FakeSlack(SLACK_TOKEN) as slack:
        config = write_config(
            tmp_path, f"sqlite:///{tmp_path / 'r.db'}", rules={"dirs": [str(write_rules(tmp_path / "slack", LIGHT))]},
            sinks={"slack": {"token": {"env": "TEST_SLACK_TOKEN"}, "api_url": slack.api_url, "rate_per_channel": 200,
                             "timeout": "1s", "default_channel": "#incidents"}})
        env = {"TEST_SLACK_TOKEN": SLACK_TOKEN, "RESPONDER_TEST_ACTION_LOG": str(tmp_path / "a.log")}
        port = free_port()
        # 500s, then 429s with Retry-After, and Slack's own rate limit on top.
        slack.fail_next(10, 500)
        slack.fail_next(5, 429, retry_after=0.5)
        slack.rate_limit(20, retry_after=0.5)
        first = responder_daemon(config, port, tmp_path / "first.log", extra_env=env).start()
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=first)
            async with aiohttp.ClientSession() as session:
                async def post_ok(body: dict[str, Any]) -> None:
                    assert await post(session, port, body) == 200
                await fire_many(post_ok, 15)
            deadline = time.monotonic() + 30
            while not slack.calls_to("chat.postMessage", ok=True):
                assert time.monotonic() < deadline, "nothing reached Slack"
                await asyncio.sleep(0.1)
            # Slack now answers after the 1 s client timeout: posts land but look failed to the sink.
            slack.set_delay(1.5)
            await asyncio.sleep(2.5)
        finally:
            first.kill9()
        slack.set_delay(0)
        with responder_daemon(config, port, tmp_path / "second.log", extra_env=env) as second:
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc=second)
            async with opened(f"sqlite:///{tmp_path / 'r.db'}") as store:
                rows = await settled(store, timeout=90)
        assert any(c.status == 500 for c in slack.calls) and any(c.status == 429 for c in slack.calls)
        assert_exactly_once_in_order(slack, rows, 15)
