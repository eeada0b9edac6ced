"""A pool of workers for one queue: claim, run with a timeout, finish or retry with backoff.

Jobs are claimed from the store with a lease. A job that keeps failing is marked `failed` after its
attempts run out and stops blocking the jobs queued behind it. `run` and `heartbeat` are long-lived
tasks of the daemon's supervisor: an unavailable store is waited out here, anything else unexpected
(also from a job's own bookkeeping) ends the loop with its error, and the supervisor restarts it.

`drain` stops a worker in an order that leaves nothing behind for the store's close: no claim is in
flight any more, the running jobs have finished (or were cancelled at the grace period's end), no heartbeat
is renewing a lease, and only then are the jobs still leased handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from responder.backoff import backoff_delay
from responder.jobs import Handler, PermanentJobError, Postpone, RetryLater
from responder.metrics import Metrics
from responder.models import Job
from responder.store import JobQueue, LeaseLost, StoreUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    concurrency: int
    lease_seconds: float
    job_timeout: float
    retry_initial: float
    retry_max: float
    poll_interval: float


class QueueWorker:
    def __init__(self, jobs: JobQueue, queue: str, handler: Handler, settings: WorkerSettings, owner: str,
                 metrics: Metrics, *, on_done: Callable[[], None] | None = None,
                 before_claim: Callable[[], Awaitable[None]] | None = None) -> None:
        """`handler` runs one job (see JobTable.handler). `on_done` runs after each job that finished: it
        wakes the workers of the queues it fed, so their new jobs start now rather than at their next poll.
        `before_claim` is awaited before each claim: it lets more urgent work go first (IntakeFirst.turn)."""
        self.jobs = jobs
        self.queue = queue
        self.handler = handler
        self.settings = settings
        self.owner = owner
        self.metrics = metrics
        self.on_done = on_done
        self.before_claim = before_claim
        self._wake = asyncio.Event()
        self._stopping = False
        # Held from a claim to its jobs' tasks being counted as running, and around a heartbeat's renewal:
        # drain takes each to know that no claim, and then no renewal, is in flight.
        self._claiming = asyncio.Lock()
        self._renewing = asyncio.Lock()
        self._released = False
        self._running: dict[asyncio.Task[None], int] = {}
        # An error that escaped a job's own bookkeeping: `run` re-raises it for the supervisor.
        self._crashed: BaseException | None = None

    def wake(self) -> None:
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        return backoff_delay(attempts, self.settings.retry_initial, self.settings.retry_max)

    async def run(self) -> None:
        while not self._stopping:
            if self._crashed is not None:
                crashed, self._crashed = self._crashed, None
                raise crashed
            free = self.settings.concurrency - len(self._running)
            jobs: list[Job] = []
            # Cleared before the claim, not after it: a job committed while the claim runs (its wake-up
            # arriving meanwhile) may be missed by that claim, and then the next turn claims it at once
            # instead of a poll interval later.
            self._wake.clear()
            if free > 0:
                if self.before_claim is not None:
                    await self.before_claim()
                    free = self.settings.concurrency - len(self._running)
                async with self._claiming:
                    if self._stopping:
                        return
                    try:
                        jobs = await self.jobs.claim(self.queue, self.owner, free, self.settings.lease_seconds)
                    except StoreUnavailable as exc:
                        log.warning("queue %s: store unavailable while claiming: %s", self.queue, exc)
                    for job in jobs:
                        task = asyncio.create_task(self._run_job(job), name=f"{self.queue}:{job.id}")
                        self._running[task] = job.id
                        task.add_done_callback(self._job_finished)
            if not jobs:
                # Until woken, the next poll, or a delayed job of this process falling due (a group's
                # group_wait, a retry's backoff), whichever comes first.
                now = time.time()
                due = self.jobs.next_due(self.queue, now)
                wait = self.settings.poll_interval if due is None else min(self.settings.poll_interval, due - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def heartbeat(self) -> None:
        """Renew the leases of running jobs at a third of the lease time."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            async with self._renewing:
                if self._released:
                    return
                try:
                    await self.jobs.heartbeat(list(self._running.values()), self.owner, self.settings.lease_seconds)
                except StoreUnavailable as exc:
                    log.warning("queue %s: could not renew leases: %s", self.queue, exc)

    def _job_finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            self._crashed = task.exception()
        self._wake.set()  # a free slot, and maybe the next job of the same ordering key

    async def _run_job(self, job: Job) -> None:
        try:
            async with asyncio.timeout(self.settings.job_timeout):
                await self.handler(job)
            outcome = "done"
            if self.on_done is not None:
                self.on_done()
        except LeaseLost as exc:
            log.warning("queue %s: %s", self.queue, exc)
            outcome = "lease_lost"
        except Postpone as exc:
            outcome = await self._postpone(job, exc.delay)
        except RetryLater as exc:
            outcome = await self._give_back(job, str(exc), exc.delay)
        except PermanentJobError as exc:
            outcome = await self._give_back(job, str(exc), 0, permanent=True)
        except TimeoutError:
            outcome = await self._give_back(job, f"timed out after {self.settings.job_timeout:g}s",
                                            self.backoff(job.attempts))
        except Exception as exc:
            log.exception("queue %s: job %s (%s) failed", self.queue, job.id, job.kind)
            outcome = await self._give_back(job, f"{type(exc).__name__}: {exc}", self.backoff(job.attempts))
        self.metrics.jobs.labels(outcome).inc()

    async def _give_back(self, job: Job, error: str, delay: float, *, permanent: bool = False) -> str:
        try:
            status = await self.jobs.retry(job, error, delay, permanent=permanent)
        except StoreUnavailable:
            # The lease will expire and the job will run again: delayed, never lost.
            return "retried"
        if status == "failed":
            log.error("queue %s: job %s (%s) failed for good: %s", self.queue, job.id, job.kind, error)
        return {"failed": "failed", "queued": "retried"}.get(status, "lease_lost")

    async def _postpone(self, job: Job, delay: float) -> str:
        try:
            kept = await self.jobs.postpone(job, delay)
        except StoreUnavailable:
            return "postponed"  # the lease will expire and the job will run again
        return "postponed" if kept else "lease_lost"

    async def drain(self, timeout: float) -> None:
        """Stop claiming; let running jobs finish within `timeout`, cancel the rest; stop renewing leases;
        hand back what is still leased, so the next start runs it (once: a job handed back does not count
        as an attempt)."""
        self._stopping = True
        self._wake.set()
        async with self._claiming:
            pass  # a claim in flight has ended, and its jobs are among the running ones
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        async with self._renewing:
            self._released = True
        try:
            released = await self.jobs.release(self.queue, self.owner)
        except StoreUnavailable:
            released = 0
        if released:
            log.info("queue %s: handed %d unfinished job(s) back for the next start", self.queue, released)
        if self._crashed is not None:  # a job's bookkeeping failed after the last claim: report it
            raise self._crashed
