"""The incident jobs: gather evidence once per incident (alert group), decide on mitigations, follow
its members, queue sink events.

- `process` runs once, `group_wait` after the incident opened, so the first delivery's members are in.
- `members` follows member changes (joined, resolved) of an incident already processed: a sink event
  with the new counts, and a `refresh` (evidence again) only when the rule asks, never more often than
  its `refresh.min_interval`.
- `resolve` runs when the last member resolved.

Collectors only read, so a job that runs again after a crash gathers again and loses nothing; its
results and the sink events are committed with the job's completion, at once. Mitigation decisions are
the exception: the guard stores each one before acting (see responder/mitigations/guard.py), so a job
re-run after a crash finds them and does not act twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from responder.collectors.base import CollectorContext, Evidence
from responder.collectors.runner import EvidenceLimits, SharedCalls, run_collectors
from responder.metrics import Metrics
from responder.mitigations.guard import Guard
from responder.models import Incident, IncidentStatus, Job, Member, group_view
from responder.redaction import Redactor
from responder.rules.engine import RuleSet, render_steps
from responder.rules.model import RefreshSpec
from responder.store import NewJob, Store
from responder.store.db import Connection
from responder.targets import Targets

log = logging.getLogger(__name__)

REFRESH_QUEUE_KEY = "refresh:{}"


@dataclass(slots=True)
class Bundle:
    """What one matched rule produced for one incident."""

    rule: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checklist: list[str] = field(default_factory=list)
    channel: str | None = None


def incident_view(incident: Incident) -> dict[str, Any]:
    view = asdict(incident)
    view["status"] = incident.status.value
    return view


@dataclass
class IncidentProcessor:
    store: Store
    ruleset: RuleSet
    targets: Targets
    guard: Guard
    redactor: Redactor
    limits: EvidenceLimits
    metrics: Metrics
    sink_queues: Sequence[str]
    # Identical collector calls of several incidents share one execution (collectors.cache_ttl).
    shared: SharedCalls | None = None
    # Told about each piece of evidence as it arrives (replay shows progress with it).
    on_evidence: Callable[[Evidence], None] | None = None

    async def handle(self, job: Job) -> None:
        assert job.incident_id is not None
        incident = await self.store.get_incident(job.incident_id)
        if incident is None:
            raise LookupError(f"incident {job.incident_id} does not exist")
        handlers: dict[str, Callable[[Job, Incident], Awaitable[None]]] = {
            "process": self.process, "refresh": self.process, "members": self.members, "resolve": self.resolve}
        handler = handlers.get(job.kind)
        if handler is None:
            raise ValueError(f"unknown pipeline job kind {job.kind!r}")
        await handler(job, incident)

    async def build_bundles(self, incident: Incident, members: Sequence[Member]) -> tuple[Incident, list[Bundle]]:
        """Run the incident's rule: collectors and mitigations for the group (also used by replay)."""
        incident, alert, firing = group_view(incident, members)
        bundles = []
        for rule in self.ruleset.by_names(incident.rule):
            self.metrics.rule_matches.labels(rule.name).inc()
            collectors, mitigations, errors = render_steps(rule, alert, firing)
            if errors:
                self.metrics.step_errors.labels(rule.name).inc(len(errors))
            evidence = await run_collectors(collectors, CollectorContext(incident, self.targets),
                                            limits=self.limits, redactor=self.redactor, metrics=self.metrics,
                                            on_evidence=self.on_evidence, shared=self.shared)
            decisions = await self.guard.run(rule, mitigations, incident, evidence)
            bundles.append(Bundle(
                rule=rule.name,
                evidence=[e.as_dict() for e in evidence],
                decisions=[d.as_dict() for d in decisions],
                errors=[str(e) for e in errors],
                checklist=list(rule.checklist),
                channel=rule.slack.channel,
            ))
        return incident, bundles

    async def process(self, job: Job, incident: Incident) -> None:
        started = time.monotonic()
        refresh = job.kind == "refresh"
        if refresh and incident.status is IncidentStatus.RESOLVED:
            await self.store.finish_job(job, result={"skipped": "the incident resolved"})
            return
        members = await self.store.members(incident.id)
        incident, bundles = await self.build_bundles(incident, members)
        errors = "; ".join(e for b in bundles for e in b.errors) or None
        if not bundles:
            self.metrics.unmatched.labels(incident.source).inc()
            log.info("incident %s (%s): no rule matched", incident.id, incident.alertname,
                     extra={"incident": incident.id})

        async def writes(conn: Connection) -> None:
            await self.store.save_processing(
                conn, incident.id, incident.labels, errors,
                evidence=[(b.rule, ev) for b in bundles for ev in b.evidence],
            )

        view = incident_view(incident) | {"error": errors}
        event = {"incident": view, "bundles": [asdict(b) for b in bundles], "refresh": refresh}
        await self.store.finish_job(
            job,
            result={"rules": [b.rule for b in bundles], "evidence": sum(len(b.evidence) for b in bundles),
                    "members": len(members)},
            writes=writes,
            follow_ups=self._events("incident.processed", incident, event),
        )
        if not refresh:
            self.metrics.incidents_opened.labels(incident.rule or "").inc()
        self.metrics.pipeline_duration.observe(time.monotonic() - started)
        log.info("incident %s (%s) %s: rule=%s members=%d evidence=%d", incident.id, incident.alertname,
                 "refreshed" if refresh else "processed", incident.rule, len(members),
                 sum(len(b.evidence) for b in bundles), extra={"incident": incident.id})

    async def members(self, job: Job, incident: Incident) -> None:
        """Members joined or resolved: tell the sinks, and refresh the evidence if the rule asks for it."""
        refresh = self._refresh(incident)
        follow_ups = self._events("incident.members", incident, {"incident": incident_view(incident)})
        due: float | None = None
        if refresh is not None and incident.processed_at is not None and incident.status is IncidentStatus.OPEN:
            joined = [m for m in await self.store.members(incident.id) if m.first_seen > incident.processed_at]
            if joined:
                due = max(time.time(), incident.processed_at + refresh.min_interval)
        if due is None:
            await self.store.finish_job(job, result={"members": incident.members_total}, follow_ups=follow_ups)
            return
        refresh_key = REFRESH_QUEUE_KEY.format(incident.id)

        async def writes(conn: Connection) -> None:
            # One waiting refresh gathers for every member that joins before it runs.
            if not await self.store.queued(conn, job.queue, refresh_key, "refresh"):
                await self.store.enqueue(conn, NewJob(job.queue, "refresh", refresh_key, incident.id),
                                         delay=due - time.time())

        await self.store.finish_job(job, result={"members": incident.members_total, "refresh_at": due},
                                    writes=writes, follow_ups=follow_ups)

    def _refresh(self, incident: Incident) -> RefreshSpec | None:
        return next((r.refresh for r in self.ruleset.by_names(incident.rule) if r.refresh is not None), None)

    async def resolve(self, job: Job, incident: Incident) -> None:
        event = {"incident": incident_view(incident)}
        await self.store.finish_job(job, result={"resolved": True},
                                    follow_ups=self._events("incident.resolved", incident, event))
        self.metrics.incidents_resolved.labels(incident.rule or "").inc()
        log.info("incident %s (%s) resolved", incident.id, incident.alertname, extra={"incident": incident.id})

    def _events(self, kind: str, incident: Incident, event: dict[str, Any]) -> list[NewJob]:
        return [NewJob(queue, kind, f"incident:{incident.id}", incident.id, event) for queue in self.sink_queues]
