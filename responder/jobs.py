"""The job protocol: every kind of queued work, declared once with its queue and payload model, and the
table that says which handler runs it.

    PROCESS = JobKind("process", IncidentJob, queue=PIPELINE_QUEUE)     # declared once, at import
    table.add(PROCESS, processor.process)     # bound once, in its owner's register(table) (Daemon.background)
    PROCESS.new(f"incident:{id}", IncidentJob(), incident_id=id)        # queued through it, never by name

A payload is validated when it is queued and again when it runs: a row that does not fit its model fails
for good with the validation error, not with a KeyError halfway through. Payload models ignore fields they
do not know and give new fields defaults, so a row queued by an earlier release still runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from responder.events import IncidentEvent, Note
from responder.models import Job, NewJob

PIPELINE_QUEUE = "pipeline"
MITIGATIONS_QUEUE = "mitigations"
CONSOLE_QUEUE = "console"


class PermanentJobError(Exception):
    """Retrying will not help (bad configuration, a permanent API error, a malformed payload): fail now."""


class RetryLater(Exception):
    """Retry after a given delay (a rate limit's Retry-After), without counting as a failure pattern."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Postpone(Exception):
    """Not now: run again after `delay`. Not a failure: no attempt is consumed, no error recorded, nothing
    logged (work that waits for a better moment, such as a Slack edit while its channel has a backlog)."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.delay = delay


class Payload(BaseModel):
    """Base of every job payload: immutable; unknown fields (from another release) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


P = TypeVar("P", bound=BaseModel)


@dataclass(frozen=True)
class JobKind(Generic[P]):
    """One kind of job. `queue` None: the producer names the queue (an event goes to every sink's queue)."""

    name: str
    payload: type[P]
    queue: str | None = None

    declared: ClassVar[dict[str, JobKind[Any]]] = {}

    def __post_init__(self) -> None:
        if self.name in JobKind.declared:
            raise ValueError(f"job kind {self.name!r} is declared twice")
        JobKind.declared[self.name] = self

    def new(self, ordering_key: str, payload: P, *, incident_id: int | None = None, queue: str | None = None,
            max_attempts: int | None = None) -> NewJob:
        target = queue or self.queue
        if target is None:
            raise ValueError(f"job kind {self.name!r} needs a queue")
        if not isinstance(payload, self.payload):
            raise TypeError(f"job kind {self.name!r} takes {self.payload.__name__}, not {type(payload).__name__}")
        return NewJob(target, self.name, ordering_key, incident_id, payload.model_dump(mode="json"), max_attempts)

    def parse(self, job: Job) -> P:
        try:
            return self.payload.model_validate(job.payload)
        except ValidationError as exc:
            raise PermanentJobError(f"job {job.id} ({self.name}): payload does not fit"
                                    f" {self.payload.__name__}: {exc}") from None


Handler = Callable[[Job], Awaitable[None]]


@dataclass(frozen=True)
class _Entry(Generic[P]):
    kind: JobKind[P]
    handler: Callable[[Job, P], Awaitable[None]]

    async def run(self, job: Job) -> None:
        await self.handler(job, self.kind.parse(job))


class JobTable:
    """Which handler runs each kind on each queue. A worker per queue dispatches with `handler(queue)`."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry[Any]] = {}

    def add(self, kind: JobKind[P], handler: Callable[[Job, P], Awaitable[None]], *, queue: str | None = None
            ) -> None:
        target = queue or kind.queue
        if target is None:
            raise ValueError(f"job kind {kind.name!r} needs a queue")
        if JobKind.declared.get(kind.name) is not kind:
            raise ValueError(f"job kind {kind.name!r} is not declared")
        if (target, kind.name) in self._entries:
            raise ValueError(f"job kind {kind.name!r} already has a handler on queue {target!r}")
        self._entries[(target, kind.name)] = _Entry(kind, handler)

    def queues(self) -> list[str]:
        return sorted({queue for queue, _ in self._entries})

    def kinds(self, queue: str) -> list[str]:
        return sorted(kind for q, kind in self._entries if q == queue)

    def check(self) -> None:
        """Startup check: every declared kind of a queue this process runs has a handler here."""
        queues = set(self.queues())
        missing = [f"{kind.name} (queue {kind.queue})" for kind in JobKind.declared.values()
                   if kind.queue in queues and (kind.queue, kind.name) not in self._entries]
        if missing:
            raise ValueError(f"job kinds without a handler: {', '.join(missing)}")

    def handler(self, queue: str) -> Handler:
        async def run(job: Job) -> None:
            entry = self._entries.get((queue, job.kind))
            if entry is None:
                raise PermanentJobError(f"job {job.id}: kind {job.kind!r} has no handler on queue {queue!r}"
                                        f" (known: {', '.join(self.kinds(queue)) or 'none'})")
            await entry.run(job)

        return run


# --- the kinds of the core queues ---------------------------------------------------------------


class IncidentJob(Payload):
    """The incident is the job row's `incident_id`; nothing else is needed."""


class ApprovalRef(Payload):
    approval_id: int


class VerifyRef(Payload):
    action_id: int
    rule: str = ""
    step: str = ""


PROCESS = JobKind("process", IncidentJob, queue=PIPELINE_QUEUE)
# Members of an incident already processed joined or resolved (one waiting row per incident at most).
MEMBERS = JobKind("members", IncidentJob, queue=PIPELINE_QUEUE)
RESOLVE = JobKind("resolve", IncidentJob, queue=PIPELINE_QUEUE)
APPROVAL_EXPIRE = JobKind("approval.expire", ApprovalRef, queue=MITIGATIONS_QUEUE)
APPROVAL_EXECUTE = JobKind("approval.execute", ApprovalRef, queue=MITIGATIONS_QUEUE)
VERIFY = JobKind("verify", VerifyRef, queue=MITIGATIONS_QUEUE)
# Sink events: one row per sink queue, in the transaction that records the change.
INCIDENT_PROCESSED = JobKind("incident.processed", IncidentEvent)
INCIDENT_RESOLVED = JobKind("incident.resolved", IncidentEvent)
# The incident's members changed (counts in the event's incident); sinks keep their summary current.
INCIDENT_MEMBERS = JobKind("incident.members", IncidentEvent)
# Told to every sink after the thread started (responder/console, mitigation outcomes).
INCIDENT_NOTE = JobKind("incident.note", Note)


class ClickRef(Payload):
    """A press of a console button, stored in `slack_clicks`."""

    click_id: int


class RefreshJob(Payload):
    # The Slack user who asked for it; None: the rule's `refresh` after new members joined.
    requested_by: str | None = None


CLICK = JobKind("slack.click", ClickRef, queue=CONSOLE_QUEUE)
REFRESH = JobKind("refresh", RefreshJob, queue=PIPELINE_QUEUE)
