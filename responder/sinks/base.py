"""The sink interface. The pipeline queues one event per sink per incident change, in the same
transaction that records the change; a sink's worker delivers them in order per incident."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from responder.config import Config
from responder.models import Job
from responder.plugins import Registry


class SinkError(Exception):
    """A delivery failed. `permanent` ones (bad channel, bad token) are not retried."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class Sink(abc.ABC):
    name: ClassVar[str]

    def __init__(self, config: Config) -> None:
        self.config = config

    @classmethod
    @abc.abstractmethod
    def enabled(cls, config: Config) -> bool: ...

    async def start(self) -> None:
        """Open clients; called once before the first delivery."""

    async def close(self) -> None:
        """Close clients; called once on shutdown."""

    @abc.abstractmethod
    async def deliver(self, job: Job) -> dict[str, Any]:
        """Deliver one event (`job.kind`, `job.payload`); returns what to keep as the job's result."""

    @property
    def queue(self) -> str:
        return f"sink:{self.name}"


registry: Registry[type[Sink]] = Registry("sink", "responder.sinks")
