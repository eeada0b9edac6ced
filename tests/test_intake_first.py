"""Intake first: while deliveries wait for their commit, the pipeline does not claim new jobs, for a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from responder.jobs import PIPELINE_QUEUE
from responder.metrics import Metrics
from responder.models import Job, NewJob
from responder.pipeline.intake_first import IntakeFirst
from responder.pipeline.worker import QueueWorker, WorkerSettings
from responder.store import Store

SETTINGS = WorkerSettings(concurrency=4, lease_seconds=30, job_timeout=10, retry_initial=0.05, retry_max=0.2,
                          poll_interval=0.05)


@contextlib.asynccontextmanager
async def pipeline(store: Store, intake: IntakeFirst) -> AsyncIterator[dict[int, float]]:
    """A pipeline worker that finishes each job; yields {job id: when it started}."""
    started: dict[int, float] = {}

    async def handle(job: Job) -> None:
        started[job.id] = time.monotonic()
        await store.queue.finish(job)

    worker = QueueWorker(store.queue, PIPELINE_QUEUE, handle, SETTINGS, "worker", Metrics(),
                         before_claim=intake.turn)
    task = asyncio.create_task(worker.run())
    try:
        yield started
    finally:
        await worker.drain(5)
        await task


async def queue_job(store: Store) -> int:
    async with store.db.transaction() as conn:
        return await store.queue.enqueue(conn, NewJob(PIPELINE_QUEUE, "process", "incident:1"))


async def wait_for(started: dict[int, float], job_id: int, timeout: float = 5) -> float:
    deadline = time.monotonic() + timeout
    while job_id not in started:
        assert time.monotonic() < deadline, f"job {job_id} never started"
        await asyncio.sleep(0.01)
    return started[job_id]


async def test_pipeline_starts_jobs_once_no_delivery_waits(store: Store) -> None:
    intake = IntakeFirst(max_wait=10)
    job_id = await queue_job(store)
    async with pipeline(store, intake) as started:
        with intake.delivering():
            await asyncio.sleep(0.3)
            assert started == {}, "a job started while a delivery waited for its commit"
            committed = time.monotonic()
        assert await wait_for(started, job_id) >= committed


async def test_a_sustained_burst_delays_the_pipeline_by_at_most_max_wait(store: Store) -> None:
    intake = IntakeFirst(max_wait=0.2)
    async with pipeline(store, intake) as started:
        with intake.delivering():  # deliveries keep waiting for the whole test
            await asyncio.sleep(0.05)
            queued = time.monotonic()
            job_id = await queue_job(store)
            delay = await wait_for(started, job_id) - queued
    assert delay < 0.2 + 0.5  # max_wait, then at most one poll and a claim on a shared machine


async def test_without_deliveries_the_pipeline_does_not_wait(store: Store) -> None:
    intake = IntakeFirst(max_wait=10)
    async with pipeline(store, intake) as started:
        queued = time.monotonic()
        job_id = await queue_job(store)
        assert await wait_for(started, job_id) - queued < 1
