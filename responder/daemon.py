"""The daemon: owns the store, targets, sinks and worker pools, and the HTTP app that feeds them.

Everything long-lived is opened in an aiohttp cleanup context, so it is closed, in reverse order, when
the app shuts down; every background task is owned here and cancelled and awaited on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack

from aiohttp import web

from responder.collectors.base import Evidence
from responder.collectors.runner import EvidenceLimits
from responder.config import Config, secret_values
from responder.intake import build_intakes
from responder.metrics import Metrics
from responder.mitigations.guard import Guard
from responder.mitigations.jobs import MitigationJobs
from responder.mitigations.locks import LocalLocks, TargetLocks, open_locks
from responder.models import Job
from responder.pipeline.process import IncidentProcessor
from responder.pipeline.worker import Handler, PermanentJobError, QueueWorker, RetryLater, WorkerSettings
from responder.redaction import Redactor
from responder.rules.engine import RuleSet
from responder.sinks import Sink, SinkError
from responder.sinks import registry as sink_registry
from responder.store import PIPELINE_QUEUE, Store, open_store
from responder.store.actions import MITIGATIONS_QUEUE, ActionStore
from responder.targets import Targets

log = logging.getLogger(__name__)


def build_sinks(config: Config) -> list[Sink]:
    return [cls(config) for name in sink_registry.names() if (cls := sink_registry.get(name)).enabled(config)]


class Daemon:
    def __init__(self, config: Config, ruleset: RuleSet, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.ruleset = ruleset
        self.metrics = metrics or Metrics()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.intakes = build_intakes(config)
        self.sinks = build_sinks(config)
        self.redactor = Redactor(secret_values(config), config.redact)
        self.ready = False
        self._store: Store | None = None
        self.workers: list[QueueWorker] = []
        self.targets = Targets(config)
        self.locks: TargetLocks = LocalLocks()
        # Called with each piece of evidence as it is gathered (replay prints progress with it).
        self.on_evidence: Callable[[Evidence], None] | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store is not open yet")
        return self._store

    @property
    def actions(self) -> ActionStore:
        return ActionStore(self.store)

    def wake(self, queue: str = PIPELINE_QUEUE) -> None:
        for worker in self.workers:
            if worker.queue == queue:
                worker.wake()

    def wake_pipeline(self) -> None:
        self.wake(PIPELINE_QUEUE)

    async def resources(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: store, targets and sinks, open for the app's lifetime."""
        cfg = self.config.store
        self._store = await open_store(self.config.store_url(), synchronous=cfg.sqlite_synchronous,
                                       pool_size=cfg.pool_size, timeout=cfg.connect_timeout,
                                       max_attempts=self.config.pipeline.max_attempts)
        if self._store.dialect == "sqlite":
            recovered = await self._store.recover_all_running()
            if recovered:
                log.info("re-queued %d job(s) left running by the previous process", recovered)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._store.close)
            await stack.enter_async_context(self.targets)
            self.locks = await open_locks(self.config.mitigations, self.targets, stack)
            for sink in self.sinks:
                await sink.start(self._store, self.metrics)
                stack.push_async_callback(sink.close)
            yield

    async def background(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: worker pools and the queue-depth gauge; drained before resources close."""
        p = self.config.pipeline
        settings = WorkerSettings(p.workers, self.config.store.lease_seconds, p.job_timeout, p.retry_initial,
                                  p.retry_max, self.config.store.poll_interval)
        guard = Guard(self.config.mitigations, self.targets, self.actions, self.locks, self.metrics)
        limits = EvidenceLimits(p.collector_timeout, p.collectors_total_timeout, p.evidence_display_bytes,
                                p.evidence_store_bytes)
        processor = IncidentProcessor(
            store=self.store, ruleset=self.ruleset, targets=self.targets, guard=guard, redactor=self.redactor,
            limits=limits, metrics=self.metrics, sink_queues=[s.queue for s in self.sinks],
            on_evidence=self.on_evidence,
        )
        mitigation_jobs = MitigationJobs(self.store, self.actions, guard, self.ruleset, limits, self.redactor)
        sink_workers = [QueueWorker(self.store, s.queue, _sink_handler(self.store, s), settings, self.owner,
                                    self.metrics) for s in self.sinks]

        def wake_sinks() -> None:
            for worker in sink_workers:
                worker.wake()

        # Both queues end their jobs with sink events: wake the sink workers rather than wait for their poll.
        self.workers = [QueueWorker(self.store, PIPELINE_QUEUE, processor.handle, settings, self.owner, self.metrics,
                                    on_done=wake_sinks),
                        QueueWorker(self.store, MITIGATIONS_QUEUE, mitigation_jobs.handle, settings, self.owner,
                                    self.metrics, on_done=wake_sinks),
                        *sink_workers]
        tasks = [asyncio.create_task(w.run(), name=f"worker:{w.queue}") for w in self.workers]
        tasks += [asyncio.create_task(w.heartbeat(), name=f"heartbeat:{w.queue}") for w in self.workers]
        tasks.append(asyncio.create_task(self._watch_queue_depth(), name="queue-depth"))
        self.ready = True
        log.info("ready: %d rule(s), intakes %s, sinks %s, store %s", len(self.ruleset.rules),
                 [i.name for i in self.intakes], [s.name for s in self.sinks], self.store.dialect)
        try:
            yield
        finally:
            self.ready = False
            await asyncio.gather(*(w.drain(self.config.server.drain_seconds) for w in self.workers))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_queue_depth(self) -> None:
        while True:
            try:
                self.metrics.queue_depth.set(await self.store.queue_depth())
            except Exception as exc:  # the gauge must never take the daemon down
                log.debug("queue depth unavailable: %s", exc)
            await asyncio.sleep(5)


def _sink_handler(store: Store, sink: Sink) -> Handler:
    async def handle(job: Job) -> None:
        try:
            delivered = await sink.deliver(job)
        except SinkError as exc:
            if exc.permanent:
                raise PermanentJobError(str(exc)) from exc
            if exc.retry_after is not None:
                raise RetryLater(str(exc), exc.retry_after) from exc
            raise
        await store.finish_job(job, delivered.result, delivered.writes, delivered.follow_ups)

    return handle


async def serve(daemon: Daemon, app: web.Application) -> None:
    """Run until SIGTERM/SIGINT: then fail readiness, stop accepting, drain, close."""
    host, port = daemon.config.server.host_port
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=daemon.config.server.drain_seconds)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("listening on http://%s:%d", host, port)
        await stop.wait()
        log.info("shutting down: readiness off, draining for up to %gs", daemon.config.server.drain_seconds)
        daemon.ready = False
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
