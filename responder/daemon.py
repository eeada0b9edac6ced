"""The daemon: owns the store, targets, sinks and worker pools, and the HTTP app that feeds them.

Everything long-lived is opened in an aiohttp cleanup context, so it is closed, in reverse order, when
the app shuts down; every background task runs under the daemon's supervisor (responder/supervisor.py),
which restarts it when it fails and cancels and awaits it on shutdown.
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

from responder.collectors.runner import EvidenceLimits, SharedCalls
from responder.config import Config, secret_values
from responder.console.jobs import ConsoleJobs
from responder.console.permissions import Permissions
from responder.evidence import Evidence
from responder.http_guard import ConnectionGuard, GuardedSite
from responder.intake import build_intakes
from responder.jobs import PIPELINE_QUEUE, JobTable
from responder.metrics import Metrics
from responder.mitigations.guard import Guard
from responder.mitigations.jobs import MitigationJobs
from responder.mitigations.locks import LocalLocks, TargetLocks, open_locks
from responder.pipeline.intake_first import IntakeFirst
from responder.pipeline.process import IncidentProcessor
from responder.pipeline.worker import QueueWorker, WorkerSettings
from responder.redaction import Redactor
from responder.rules.engine import RuleSet
from responder.rules.grouping import RuleGrouping
from responder.secret_reload import SecretReloader
from responder.sinks import Sink
from responder.sinks import registry as sink_registry
from responder.sinks.slack import SlackSink
from responder.store import Store, StoreUnavailable, open_store
from responder.store.actions import ActionStore
from responder.supervisor import RestartPolicy, Supervisor
from responder.targets import Targets, preload_clients

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
        self.secrets = SecretReloader(config, self.redactor)
        self.started = False
        self.intake_first = IntakeFirst(config.pipeline.intake_first_max_wait)
        policy = config.supervisor
        self.supervisor = Supervisor(RestartPolicy(policy.restart_initial, policy.restart_max, policy.max_restarts,
                                                   policy.restart_window), self.metrics)
        self._store: Store | None = None
        self.workers: list[QueueWorker] = []
        self.targets = Targets(config)
        self.locks: TargetLocks = LocalLocks()
        # Called with each piece of evidence as it is gathered (replay prints progress with it).
        self.on_evidence: Callable[[Evidence], None] | None = None

    @property
    def ready(self) -> bool:
        """Started, not shutting down, and every supervised task running."""
        return self.started and not self.supervisor.down

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the store is not open yet")
        return self._store

    @property
    def actions(self) -> ActionStore:
        return ActionStore(self.store)

    def wake(self, *queues: str) -> None:
        for worker in self.workers:
            if worker.queue in queues:
                worker.wake()

    def wake_pipeline(self) -> None:
        self.wake(PIPELINE_QUEUE)

    async def resources(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: store, targets and sinks, open for the app's lifetime."""
        cfg = self.config.store
        self._store = await open_store(self.config.store_url(), synchronous=cfg.sqlite_synchronous,
                                       pool_size=cfg.pool_size, timeout=cfg.connect_timeout,
                                       max_attempts=self.config.pipeline.max_attempts,
                                       grouping=RuleGrouping(self.ruleset))
        if self._store.dialect == "sqlite":
            recovered = await self._store.queue.recover_all_running()
            if recovered:
                log.info("re-queued %d job(s) left running by the previous process", recovered)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._store.close)
            for name, writer in self._store.tasks().items():
                self.supervisor.start(name, writer, stop_last=True)
            # Runs before the store closes (a stack unwinds last in, first out); after the workers have
            # drained, it is the writers that are left.
            stack.push_async_callback(self.supervisor.stop)
            preload_clients(self.config.targets)
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
        guard = Guard(self.config.mitigations, self.targets, self.actions, self.locks, self.metrics, self.redactor)
        limits = EvidenceLimits(p.collector_timeout, p.collectors_total_timeout, p.evidence_display_bytes,
                                p.evidence_store_bytes)
        ttl = self.config.collectors.cache_ttl
        shared = SharedCalls(ttl) if ttl > 0 else None
        processor = IncidentProcessor(
            store=self.store, ruleset=self.ruleset, targets=self.targets, guard=guard, redactor=self.redactor,
            limits=limits, metrics=self.metrics, sink_queues=[s.queue for s in self.sinks], shared=shared,
            on_evidence=self.on_evidence,
        )
        mitigation_jobs = MitigationJobs(self.store, self.actions, guard, self.ruleset, limits, self.redactor,
                                         [s.queue for s in self.sinks])
        table = JobTable()
        processor.register(table)
        mitigation_jobs.register(table)
        self._console().register(table)
        for sink in self.sinks:
            sink.register(table, self.store)
        table.check()
        sink_queues = {q for s in self.sinks for q in s.queues}

        def wake_sinks() -> None:
            self.wake(*sink_queues)

        # The pipeline's, the mitigations' and the console's jobs end with sink events, and a sink's events
        # with its outbox rows: wake the sink workers rather than wait for their poll.
        self.workers = [QueueWorker(self.store.queue, queue, table.handler(queue), settings, self.owner, self.metrics,
                                    on_done=wake_sinks,
                                    before_claim=self.intake_first.turn if queue == PIPELINE_QUEUE else None)
                        for queue in table.queues()]
        for worker in self.workers:
            self.supervisor.start(f"worker:{worker.queue}", worker.run)
            self.supervisor.start(f"heartbeat:{worker.queue}", worker.heartbeat)
        self.supervisor.start("queue-depth", self._watch_queue_depth)
        if self.secrets.interval > 0 and self.secrets.refs:
            self.supervisor.start("secret-reload", self.secrets.run)
        for sink in self.sinks:
            for name, task in sink.tasks().items():
                self.supervisor.start(name, task)
        self.started = True
        log.info("ready: %d rule(s), intakes %s, sinks %s, store %s", len(self.ruleset.rules),
                 [i.name for i in self.intakes], [s.name for s in self.sinks], self.store.dialect)
        try:
            yield
        finally:
            self.started = False
            self.supervisor.stopping()
            drained = await asyncio.gather(*(w.drain(self.config.server.drain_seconds) for w in self.workers),
                                           return_exceptions=True)
            for worker, outcome in zip(self.workers, drained, strict=True):
                if isinstance(outcome, BaseException):
                    log.error("queue %s raised while draining", worker.queue, exc_info=outcome)
                    self.supervisor.errors.append(outcome)
            await self.supervisor.stop()
            if shared is not None:
                await shared.close()

    def _console(self) -> ConsoleJobs:
        """The console's jobs, asking Slack through the Slack sink's client (user groups, ephemeral answers)."""
        settings = self.config.sinks.slack
        slack = next((s for s in self.sinks if isinstance(s, SlackSink)), None)
        members_of = slack.members_of if slack is not None else _no_slack
        permissions = Permissions(settings.permissions, members_of, settings.membership_cache)
        return ConsoleJobs(self.config, self.store, self.ruleset, self.targets, permissions,
                           [s.queue for s in self.sinks], self.wake, tell=slack.tell if slack is not None else None,
                           metrics=self.metrics)

    async def _watch_queue_depth(self) -> None:
        while True:
            try:
                self.metrics.queue_depth.set(await self.store.queue.depth())
            except StoreUnavailable as exc:
                log.debug("queue depth unavailable: %s", exc)
            await asyncio.sleep(5)


async def _no_slack(group: str) -> list[str]:
    raise LookupError("the Slack sink is off (sinks.slack.token), so user groups cannot be looked up")


class DaemonFailed(Exception):
    """A supervised task kept failing, or something raised during shutdown: exit non-zero."""


async def serve(daemon: Daemon, app: web.Application) -> None:
    """Run until SIGTERM/SIGINT or a task that keeps failing: then fail readiness, stop accepting,
    drain, close. Raises DaemonFailed when the daemon did not stop cleanly."""
    host, port = daemon.config.server.host_port
    server = daemon.config.server
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=server.drain_seconds,
                           keepalive_timeout=server.keepalive_timeout)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.secrets.reload)
    try:
        # Several processes of one daemon share the port; the kernel spreads connections across them.
        guard = ConnectionGuard(server.max_connections, server.header_timeout, daemon.metrics)
        site = GuardedSite(runner, host, port, guard, reuse_port=server.processes > 1)
        await site.start()
        log.info("listening on http://%s:%d (pid %d, event loop %s)", host, port, os.getpid(),
                 type(loop).__module__.split(".")[0])
        stopping = asyncio.create_task(stop.wait(), name="wait-for-signal")
        failing = asyncio.create_task(daemon.supervisor.failed.wait(), name="wait-for-failure")
        await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
        for waiter in (stopping, failing):
            waiter.cancel()
        await asyncio.gather(stopping, failing, return_exceptions=True)
        log.info("shutting down: readiness off, draining for up to %gs", daemon.config.server.drain_seconds)
        daemon.started = False
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    supervisor = daemon.supervisor
    if supervisor.failure is not None or supervisor.errors:
        raise DaemonFailed(str(supervisor.failure or f"{len(supervisor.errors)} error(s) while stopping; see the log"))
    log.info("stopped")
