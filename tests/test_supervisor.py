"""Supervised tasks: a worker loop that fails restarts (counted, readiness 503 meanwhile), its job still
runs; a store writer that fails answers 503 and restarts; a task that fails on every start makes the process
exit non-zero; errors at shutdown are kept."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from responder.metrics import Metrics
from responder.store import Store
from responder.store.db import split_schema
from responder.supervisor import RestartPolicy, Supervisor
from tests.conftest import DaemonClient, make_config, write_rules
from tests.support.alerts import am_alert, am_payload
from tests.support.processes import responder_daemon, wait_http
from tests.support.services import free_port

RULES = """
rules:
  - name: sleepy
    match: ['alertname="Sleepy"']
    collectors:
      - {type: test.sleep, params: {seconds: 0}}
"""

FAST_RESTARTS = {"supervisor.restart_initial": 0.3, "supervisor.restart_max": 0.5, "store.lease_seconds": 1.5,
                 "sinks.console.enabled": False, "plugins": ["tests.support.plugins"]}


def restarts(metrics_text: str, task: str) -> float:
    found = re.search(rf'^responder_task_restarts_total{{task="{re.escape(task)}"}} (\S+)$', metrics_text, re.M)
    return float(found.group(1)) if found else 0.0


async def watch_readiness(client: Any, seen: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        seen.append((await client.get("/readyz")).status)
        await asyncio.sleep(0.02)


async def pipeline_done(store: Store, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = await store.queue.rows(queue="pipeline")
        if rows and all(r["status"] == "done" for r in rows):
            return
        assert time.monotonic() < deadline, [dict(r) for r in rows]
        await asyncio.sleep(0.05)


def failing(method: Any, times: int) -> Any:
    """`method`, raising an arbitrary error (a bug, an unexpected driver error) on its first `times` calls."""
    left = [times]

    async def call(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError("an unexpected error")
        return await method(*args, **kwargs)

    return call


async def test_a_claim_that_raises_restarts_the_worker_and_readiness_recovers(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), **FAST_RESTARTS)
    client, daemon = await daemon_client(config)
    store = daemon.store
    store.queue.claim = failing(store.queue.claim, 2)  # type: ignore[method-assign]
    seen: list[int] = []
    stop = asyncio.Event()
    watching = asyncio.create_task(watch_readiness(client, seen, stop))
    response = await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Sleepy")))
    assert response.status == 200
    await pipeline_done(store)
    # The restarted worker reports ready on its next loop; a loaded machine may take a while to get there.
    deadline = time.monotonic() + 10
    while (not seen or seen[-1] != 200) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await watching
    assert 503 in seen, "readiness failed while a worker was down"
    assert seen[-1] == 200, "and recovered"
    metrics = await (await client.get("/metrics")).text()
    workers = re.findall(r'^responder_task_restarts_total{task="(worker:[^"]+)"}', metrics, re.M)
    assert sum(restarts(metrics, task) for task in workers) >= 2


async def test_a_handler_error_retries_the_job_and_a_bookkeeping_error_restarts_the_worker(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), **FAST_RESTARTS)
    client, daemon = await daemon_client(config)
    store = daemon.store
    # The handler fails (its first incident lookup), and so does handing the failed attempt back.
    store.get_incident = failing(store.get_incident, 1)  # type: ignore[method-assign]
    store.queue.retry = failing(store.queue.retry, 1)  # type: ignore[method-assign]
    response = await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Sleepy")))
    assert response.status == 200
    await pipeline_done(store)
    (job,) = await store.queue.rows(queue="pipeline")
    assert job["attempts"] == 2, "the job ran again once its lease ran out"
    metrics = await (await client.get("/metrics")).text()
    assert restarts(metrics, "worker:pipeline") == 1
    assert (await client.get("/readyz")).status == 200


def leaking_a_cancellation(write: Any) -> Any:
    """The store's write, once cancelling itself from within (a driver's timeout leaking a cancellation),
    which no error handling for exceptions catches."""
    once = [True]

    async def call(*args: Any) -> Any:
        if once:
            once.clear()
            raise asyncio.CancelledError()
        return await write(*args)

    return call


def answering_nothing(write: Any) -> Any:
    """The store's write, once committing but returning no result for its batch: a broken contract."""
    once = [True]

    async def call(*args: Any) -> Any:
        results = await write(*args)
        if once:
            once.clear()
            return []
        return results

    return call


@pytest.mark.parametrize("fault", [leaking_a_cancellation, answering_nothing])
async def test_a_store_writer_that_fails_answers_503_then_restarts_and_takes_deliveries_again(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient, fault: Any) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES),
                         **{**FAST_RESTARTS, "supervisor.restart_initial": 0.5})
    client, daemon = await daemon_client(config)
    intake = daemon.store._intake
    intake.write = fault(intake.write)
    async with asyncio.timeout(10):  # never a webhook left waiting
        first = await client.post("/webhooks/alertmanager", json=am_payload(am_alert("Sleepy", labels={"pod": "a"})))
        assert first.status == 503
        assert await first.json() == {
            "error": "store unavailable",
            "detail": "alerts were not stored: the store's intake-writer failed"
                      f" ({'CancelledError' if fault is leaking_a_cancellation else 'ValueError'})"
                      " and is being restarted; retry later"}
        statuses = []
        while not statuses or statuses[-1] == 503:
            response = await client.post("/webhooks/alertmanager",
                                         json=am_payload(am_alert("Sleepy", labels={"pod": "b"})))
            statuses.append(response.status)
            await asyncio.sleep(0.05)
    assert statuses[-1] == 200, statuses
    if daemon.store.dialect == "sqlite":
        assert len(statuses) > 1, "its only writer was down a while, and said so at once meanwhile"
    stored = [a["fingerprint"] for a in await daemon.store.list_alerts(10)]
    assert am_alert("Sleepy", labels={"pod": "b"})["fingerprint"] in stored
    async with asyncio.timeout(10):
        while (await client.get("/readyz")).status != 200:  # down until restarted
            await asyncio.sleep(0.05)
    metrics = await (await client.get("/metrics")).text()
    writers = re.findall(r'^responder_task_restarts_total{task="(intake-writer:\d+)"}', metrics, re.M)
    assert len(writers) == (1 if daemon.store.dialect == "sqlite" else 3)
    assert sum(restarts(metrics, task) for task in writers) == 1


async def test_a_task_failing_on_every_start_makes_the_process_exit_non_zero(tmp_path: Path, pg_url: str) -> None:
    rules = write_rules(tmp_path / "rules", RULES)
    config = {
        "store": {"url": pg_url, "poll_interval": "50ms"},
        "rules": {"dirs": [str(rules)]},
        "plugins": ["tests.support.plugins"],
        "sinks": {"console": {"enabled": False}},
        "supervisor": {"restart_initial": "50ms", "restart_max": "100ms", "max_restarts": 3,
                       "restart_window": "30s"},
        "server": {"drain_seconds": "1s"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    with responder_daemon(path, port, tmp_path / "daemon.log") as daemon:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc=daemon)
        # Someone breaks the schema under the running daemon: every claim now fails the same way.
        dsn, schema = split_schema(pg_url)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'ALTER TABLE "{schema}".jobs RENAME TO jobs_elsewhere')
        finally:
            await conn.close()
        started = time.monotonic()
        assert daemon.proc is not None
        code = await asyncio.to_thread(daemon.proc.wait, 20)
        took = time.monotonic() - started
    assert code != 0
    assert took < 10, f"exited after {took:.1f}s"
    output = daemon.output()
    assert "giving up" in output and "UndefinedTableError" in output, output[-3000:]


async def test_errors_raised_while_stopping_are_kept_not_discarded() -> None:
    supervisor = Supervisor(RestartPolicy(), Metrics())

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("could not flush on the way out")

    supervisor.start("stubborn", stubborn)
    await asyncio.sleep(0)
    await supervisor.stop()
    assert [str(e) for e in supervisor.errors] == ["could not flush on the way out"]


@pytest.mark.parametrize("returns", [True, False])
async def test_a_task_that_returns_or_raises_is_restarted_until_the_policy_gives_up(returns: bool) -> None:
    metrics = Metrics()
    supervisor = Supervisor(RestartPolicy(restart_initial=0.01, restart_max=0.02, max_restarts=2,
                                          restart_window=10), metrics)
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if not returns:
            raise ValueError("broken")

    supervisor.start("flaky", flaky)
    async with asyncio.timeout(5):
        await supervisor.failed.wait()
    assert len(runs) == 3
    assert supervisor.down == ["flaky"]
    assert metrics.task_restarts.labels("flaky")._value.get() == 2
    await supervisor.stop()
