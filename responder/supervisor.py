"""One owner for every long-lived task of the daemon (queue workers, heartbeats, gauges, ...).

A task that raises is logged with its traceback, counted (`responder_task_restarts_total{task}`) and
started again after a jittered backoff; while it is down, readiness fails. A task that keeps failing
(more than `max_restarts` restarts within `restart_window`) stops being restarted and `failed` is set:
the daemon then exits non-zero, so that Kubernetes or systemd restarts the whole process, which is
what fixes a stuck connection pool or a broken client. At shutdown every task is cancelled and
awaited, those started with `stop_last` (the store's writers, which the others write through) after the
rest; whatever one raised on its way out is logged and kept in `errors`, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from responder.backoff import backoff_delay
from responder.metrics import Metrics

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    restart_initial: float = 0.5
    restart_max: float = 30.0
    max_restarts: int = 5
    restart_window: float = 60.0


class TaskFailed(Exception):
    """A supervised task failed more often than the restart policy allows."""


class Supervisor:
    def __init__(self, policy: RestartPolicy, metrics: Metrics) -> None:
        self.policy = policy
        self.metrics = metrics
        self.failed = asyncio.Event()
        self.failure: TaskFailed | None = None
        self.errors: list[BaseException] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last: set[str] = set()
        self._down: set[str] = set()
        self._stopping = False

    def start(self, name: str, run: TaskFactory, *, stop_last: bool = False) -> None:
        """Run `run()` as the task `name` until `stop()`; it is called again each time it fails. `stop_last`:
        stopped after every other task."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        if stop_last:
            self._last.add(name)
        # Exported at 0 from the start, so a dashboard or an alert tells "never restarted" from "not scraped".
        self.metrics.task_restarts.labels(name)
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=name)

    @property
    def down(self) -> list[str]:
        """Tasks not running right now: waiting to restart, or given up on."""
        return sorted(self._down)

    async def _keep(self, name: str, run: TaskFactory) -> None:
        restarts: deque[float] = deque()
        while True:
            try:
                await run()
            except Exception as exc:
                if self._stopping:  # raised on its way out: stop() reports it
                    raise
                error: BaseException = exc
                log.error("task %s failed: %s: %s", name, type(exc).__name__, exc, exc_info=exc)
            else:
                if self._stopping:
                    return
                error = RuntimeError(f"task {name} returned while the daemon was running")
                log.error("task %s returned while the daemon was running", name)
            self._down.add(name)
            now = time.monotonic()
            restarts.append(now)
            while restarts and restarts[0] < now - self.policy.restart_window:
                restarts.popleft()
            if len(restarts) > self.policy.max_restarts:
                self.failure = TaskFailed(f"task {name} failed {len(restarts)} times within"
                                          f" {self.policy.restart_window:g}s; last error: {error}")
                log.critical("%s: giving up, the process exits", self.failure)
                self.failed.set()
                return
            self.metrics.task_restarts.labels(name).inc()
            await asyncio.sleep(backoff_delay(len(restarts), self.policy.restart_initial, self.policy.restart_max))
            self._down.discard(name)
            log.info("task %s restarted", name)

    def stopping(self) -> None:
        """Shutdown has begun: a task that returns now (a worker that drained) is done, not failed."""
        self._stopping = True

    async def stop(self) -> None:
        """Cancel every task and wait for it, the `stop_last` ones after the others; errors raised while
        stopping are logged and kept."""
        self._stopping = True
        for last in (False, True):
            tasks = [self._tasks.pop(name) for name in [n for n in self._tasks if (n in self._last) == last]]
            for task in tasks:
                task.cancel()
            for task, outcome in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
                if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                    log.error("task %s raised while stopping", task.get_name(), exc_info=outcome)
                    self.errors.append(outcome)
