"""The sink interface. The pipeline queues one incident event per sink per incident change, in the same
transaction that records the change; a sink's worker delivers them in order per incident. A sink may
queue further rows of its own (an outbox, one row per API call) on its queue, declared in `outbox()`."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from responder.config import Config
from responder.events import Bundle, IncidentEvent, Note
from responder.jobs import (
    INCIDENT_MEMBERS,
    INCIDENT_NOTE,
    INCIDENT_PROCESSED,
    INCIDENT_RESOLVED,
    JobKind,
    JobTable,
    PermanentJobError,
    RetryLater,
)
from responder.metrics import Metrics
from responder.models import Job, NewJob
from responder.plugins import Registry
from responder.store import Store
from responder.store.db import Connection

P = TypeVar("P", bound=BaseModel)


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


SinkHandler = Callable[[Job, P], Awaitable[Delivered]]


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
    async def deliver(self, job: Job, event: IncidentEvent) -> Delivered:
        """Deliver one incident event (`job.kind`: incident.processed, incident.members or incident.resolved),
        its evidence loaded."""

    async def note(self, job: Job, note: Note) -> Delivered:
        """Tell something that happened after the incident's first event (a console press, an action's
        outcome); sinks without a place for it ignore it."""
        return Delivered({"ignored": True})

    def outbox(self) -> list[tuple[JobKind[Any], SinkHandler[Any]]]:
        """The further kinds this sink queues on its own queue, with their handlers."""
        return []

    @property
    def queue(self) -> str:
        return f"sink:{self.name}"

    def register(self, table: JobTable, store: Store) -> None:
        """Bind this sink's kinds on its queue: incident events and its outbox rows."""

        async def event(job: Job, payload: IncidentEvent) -> Delivered:
            return await self.deliver(job, payload.model_copy(
                update={"bundles": await load_evidence(store, payload.bundles)}))

        async def note(job: Job, payload: Note) -> Delivered:
            return await self.note(job, payload.model_copy(
                update={"bundles": await load_evidence(store, payload.bundles)}))

        for kind in (INCIDENT_PROCESSED, INCIDENT_MEMBERS, INCIDENT_RESOLVED):
            table.add(kind, finishing(store, event), queue=self.queue)
        table.add(INCIDENT_NOTE, finishing(store, note), queue=self.queue)
        for kind, handler in self.outbox():
            table.add(kind, finishing(store, handler), queue=self.queue)


async def load_evidence(store: Store, bundles: list[Bundle]) -> list[Bundle]:
    """The bundles with their referenced evidence rows read back from the store."""
    ids = [i for bundle in bundles for i in bundle.evidence_ids]
    if not ids:
        return bundles
    stored = await store.evidence_by_id(ids)
    return [b.model_copy(update={"evidence": [*b.evidence, *(stored[i] for i in b.evidence_ids if i in stored)]})
            for b in bundles]


def finishing(store: Store, handler: SinkHandler[P]) -> Callable[[Job, P], Awaitable[None]]:
    """A sink handler as a job handler: its delivery committed with the job, its errors sorted into
    fail now, retry after a given delay, or retry with backoff."""

    async def run(job: Job, payload: P) -> None:
        try:
            delivered = await handler(job, payload)
        except SinkError as exc:
            if exc.permanent:
                raise PermanentJobError(str(exc)) from exc
            if exc.retry_after is not None:
                raise RetryLater(str(exc), exc.retry_after) from exc
            raise
        await store.queue.finish(job, delivered.result, delivered.writes, delivered.follow_ups)

    return run


registry: Registry[type[Sink]] = Registry("sink", "responder.sinks")
