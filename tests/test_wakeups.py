"""Workers learn of new work from the daemon itself, not from their poll: a new alert's evidence is printed
as soon as its collectors are done (or its group's group_wait has passed), even with a poll interval far
longer than the test waits. And the store
keeps the path short: a read never waits for another transaction's commit, and claiming a job leaves the
commits that must be durable (deliveries, results) synchronous."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from responder.jobs import PIPELINE_QUEUE
from responder.metrics import Metrics
from responder.models import Job, NewJob
from responder.pipeline.worker import QueueWorker, WorkerSettings
from responder.store import Store, open_store
from tests.conftest import DaemonClient, make_config, write_rules
from tests.support.alerts import am_alert, am_payload

# Longer than any wait below: a job that has to wait for the poll to start fails the test.
SLOW_POLL = 60.0
SETTINGS = WorkerSettings(concurrency=4, lease_seconds=30, job_timeout=10, retry_initial=0.05, retry_max=0.2,
                          poll_interval=SLOW_POLL)

RULES = """
rules:
  - name: quick
    match: ['alertname="Quick"']
    collectors:
      - {type: test.sleep, id: nap, params: {seconds: 0.05}}
  - name: grouped
    match: ['alertname="Grouped"']
    group_wait: 1s
    collectors:
      - {type: test.sleep, id: nap, params: {seconds: 0.05}}
"""


async def test_a_job_committed_while_a_claim_waits_for_its_commit_starts_without_a_poll(store: Store) -> None:
    """The race of a claim and a commit: the claim starts (woken by anything), the job commits while it
    runs, and the wake-up for that job arrives before the claim returns empty-handed. The worker claims
    again at once instead of sleeping until its next poll."""
    started: dict[int, float] = {}

    async def handle(job: Job) -> None:
        started[job.id] = time.monotonic()
        await store.queue.finish(job)

    worker = QueueWorker(store.queue, PIPELINE_QUEUE, handle, SETTINGS, "worker", Metrics())
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.2)  # its first claim found nothing: idle until woken
        async with store.db.transaction() as conn:
            worker.wake()  # a claim starts; on SQLite it waits for this transaction's lock
            await asyncio.sleep(0.2)
            job_id = await store.queue.enqueue(conn, NewJob(PIPELINE_QUEUE, "process", "incident:1"))
        worker.wake()  # as a producer does once its transaction has committed
        async with asyncio.timeout(SLOW_POLL / 4):
            while job_id not in started:
                await asyncio.sleep(0.01)
    finally:
        await worker.drain(5)
        await task


async def test_an_idle_daemon_prints_a_new_alerts_evidence_without_waiting_for_a_poll(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), **{
        "store.poll_interval": SLOW_POLL, "plugins": ["tests.support.plugins"], "collectors.cache_ttl": 0})
    client, _ = await daemon_client(config)
    await asyncio.sleep(0.3)  # every worker's first claim found nothing: idle until woken
    printed = ""
    for n in range(3):  # one alert at a time, each printed before the next is sent
        payload = am_payload(am_alert("Quick", labels={"n": str(n)}), group_key=f"quick-{n}")
        response = await client.post("/webhooks/alertmanager", json=payload)
        assert response.status == 200
        async with asyncio.timeout(SLOW_POLL / 4):
            while printed.count("[incident.processed]") <= n:
                await asyncio.sleep(0.01)
                printed += capsys.readouterr().out
    assert printed.count("slept 0.05s") == 3


async def test_a_group_is_processed_when_its_group_wait_ends_not_at_the_next_poll(
        tmp_path: Path, store_url: str, daemon_client: DaemonClient, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(store_url, write_rules(tmp_path / "rules", RULES), **{
        "store.poll_interval": SLOW_POLL, "plugins": ["tests.support.plugins"], "collectors.cache_ttl": 0})
    client, _ = await daemon_client(config)
    await asyncio.sleep(0.3)
    first, second = (am_alert("Grouped", labels={"pod": pod}) for pod in ("a", "b"))
    assert (await client.post("/webhooks/alertmanager", json=am_payload(first, group_key="g"))).status == 200
    accepted = time.monotonic()
    assert (await client.post("/webhooks/alertmanager", json=am_payload(first, second, group_key="g"))).status == 200
    printed = ""
    async with asyncio.timeout(SLOW_POLL / 4):
        while "[incident.processed]" not in printed:
            await asyncio.sleep(0.01)
            printed += capsys.readouterr().out
    assert time.monotonic() - accepted >= 1  # the group waited for its members
    assert "alerts: 2 firing of 2" in printed  # and gathered evidence once, for both


async def test_a_read_does_not_wait_for_a_commit_in_progress(store: Store) -> None:
    async with store.db.transaction() as conn:
        await store.queue.enqueue(conn, NewJob(PIPELINE_QUEUE, "process", "incident:1"))
        # A status page, a readiness probe or a worker reading an incident while a batch commits.
        async with asyncio.timeout(5):
            assert await store.queue.rows() == []
            await store.ping()
    assert len(await store.queue.rows()) == 1


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await open_store(f"sqlite:///{tmp_path / 'responder.db'}")
    try:
        yield store
    finally:
        await store.close()


async def test_claiming_a_job_leaves_deliveries_committed_with_synchronous_full(sqlite_store: Store) -> None:
    """A claim commits without waiting for the disk (losing it only runs the job again); whatever commits
    after it is as durable as before (PRAGMA synchronous 2 = FULL, the default)."""
    async with sqlite_store.db.transaction() as conn:
        await sqlite_store.queue.enqueue(conn, NewJob(PIPELINE_QUEUE, "process", "incident:1"))
    assert [job.id for job in await sqlite_store.queue.claim(PIPELINE_QUEUE, "worker", 10, 30)] == [1]
    async with sqlite_store.db.transaction() as conn:
        assert await conn.fetchval("PRAGMA synchronous") == 2
