"""The sink interface. The pipeline queues one event per sink per incident change, in the same
transaction that records the change; a sink's worker delivers them in order per incident."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from responder.config import Config
from responder.metrics import Metrics
from responder.models import Job
from responder.plugins import Registry
from responder.store import NewJob, Store
from responder.store.db import Connection


class SinkError(Exception):
    """A delivery failed. `permanent` ones (bad channel, bad token) are not retried."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one delivery leaves behind, committed with the job's completion or not at all: the job's
    result, writes to the store and further jobs (a sink's own outbox rows)."""

    result: dict[str, Any]
    writes: Callable[[Connection], Awaitable[None]] | None = None
    follow_ups: Sequence[NewJob] = ()


class Sink(abc.ABC):
    name: ClassVar[str]

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    @abc.abstractmethod
    def enabled(cls, config: Config) -> bool: ...

    async def start(self, store: Store, metrics: Metrics) -> None:
        """Open clients; called once before the first delivery."""

    async def close(self) -> None:
        """Close clients; called once on shutdown."""

    def tasks(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """Long-lived tasks of this sink (gauges, ...), by name: the daemon's supervisor runs them
        between `start` and `close`."""
        return {}

    @abc.abstractmethod
    async def deliver(self, job: Job) -> Delivered:
        """Deliver one event (`job.kind`, `job.payload`)."""

    @property
    def queue(self) -> str:
        return f"sink:{self.name}"


registry: Registry[type[Sink]] = Registry("sink", "responder.sinks")
