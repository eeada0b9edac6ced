"""The incident jobs: gather evidence once per incident (alert group), decide on mitigations, follow its
members, queue sink events.

- `process` runs once, `group_wait` after the incident opened, so the first delivery's members are in.
- `members` follows member changes (joined, resolved) of an incident already processed: a sink event
  with the new counts, and a `refresh` (evidence again) only when the rule asks, never more often than
  its `refresh.min_interval`.
- `resolve` runs when the last member resolved.

Collectors only read, so a job that runs again after a crash gathers again and loses nothing; its
results, the incident's rule and the sink events are committed with the job's completion, at once.
Mitigation decisions are the exception: the guard stores each one before acting (see
responder/mitigations/guard.py), so a job re-run after a crash finds them and does not act twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from responder.collectors.base import CollectorContext
from responder.collectors.runner import EvidenceLimits, SharedCalls, run_collectors
from responder.events import Bundle, IncidentEvent, IncidentView, Note
from responder.evidence import Evidence
from responder.jobs import (
    INCIDENT_MEMBERS,
    INCIDENT_NOTE,
    INCIDENT_PROCESSED,
    INCIDENT_RESOLVED,
    MEMBERS,
    PIPELINE_QUEUE,
    PROCESS,
    REFRESH,
    RESOLVE,
    IncidentJob,
    JobKind,
    JobTable,
    RefreshJob,
)
from responder.metrics import Metrics
from responder.mitigations.guard import Guard
from responder.models import Incident, IncidentStatus, Job, Member, NewJob, group_view
from responder.redaction import Redactor
from responder.rules.engine import RuleSet, render_steps
from responder.steps import RenderedStep
from responder.store import Store
from responder.store.db import Connection
from responder.targets import Targets

log = logging.getLogger(__name__)


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

    def register(self, table: JobTable) -> None:
        table.add(PROCESS, self.process)
        table.add(MEMBERS, self.members)
        table.add(RESOLVE, self.resolve)
        table.add(REFRESH, self.refresh)

    async def _incident(self, job: Job) -> Incident:
        incident = await self.store.get_incident(job.incident_id) if job.incident_id is not None else None
        if incident is None:
            raise LookupError(f"incident {job.incident_id} of job {job.id} does not exist")
        return incident

    async def build_bundles(self, incident: Incident, members: Sequence[Member]
                            ) -> tuple[Incident, list[tuple[Bundle, list[Evidence]]]]:
        """Run the incident's rule for its group: the incident as its templates saw it (the labels its
        members share), and each rule's bundle (without its evidence) with the evidence gathered for it."""
        incident, alert, firing = group_view(incident, members)
        bundles = []
        for rule in self.ruleset.by_names(incident.rule):
            self.metrics.rule_matches.labels(rule.name).inc()
            collectors, mitigations, errors = render_steps(rule, alert, firing)
            if errors:
                self.metrics.step_errors.labels(rule.name).inc(len(errors))
            evidence = await self._collect(incident, collectors)
            decisions = await self.guard.run(rule, mitigations, incident, evidence)
            bundles.append((Bundle(
                rule=rule.name,
                decisions=[d.as_dict() for d in decisions],
                errors=[str(e) for e in errors],
                checklist=list(rule.checklist),
                channel=rule.slack.channel,
                alertmanager=rule.alertmanager,
            ), evidence))
        return incident, bundles

    async def _collect(self, incident: Incident, steps: Sequence[RenderedStep]) -> list[Evidence]:
        return await run_collectors(steps, CollectorContext(incident, self.targets), limits=self.limits,
                                    redactor=self.redactor, metrics=self.metrics, on_evidence=self.on_evidence,
                                    shared=self.shared)

    async def process(self, job: Job, _: IncidentJob) -> None:
        started = time.monotonic()
        incident = await self._incident(job)
        members = await self.store.members(incident.id)
        incident, bundles = await self.build_bundles(incident, members)
        errors = "; ".join(e for b, _ in bundles for e in b.errors) or None
        gathered = sum(len(evidence) for _, evidence in bundles)
        if not bundles:
            self.metrics.unmatched.labels(incident.source).inc()
            log.info("incident %s (%s): no rule matched", incident.id, incident.alertname,
                     extra={"incident": incident.id})

        async def writes(conn: Connection) -> None:
            # The sink events name the evidence rows this transaction writes; they are queued with them.
            ids = await self.store.save_processing(conn, incident.id, incident.labels, errors,
                                                   [(b.rule, ev) for b, evidence in bundles for ev in evidence])
            referenced = []
            for bundle, evidence in bundles:
                mine, ids = ids[:len(evidence)], ids[len(evidence):]
                referenced.append(bundle.model_copy(update={"evidence_ids": mine}))
            event = IncidentEvent(incident=IncidentView.of(incident, error=errors), bundles=referenced)
            for new in self._events(INCIDENT_PROCESSED, incident, event):
                await self.store.queue.enqueue(conn, new)

        await self.store.queue.finish(job, writes=writes, result={
            "rules": [b.rule for b, _ in bundles], "evidence": gathered, "members": len(members)})
        self.metrics.incidents_opened.labels(incident.rule or "").inc()
        self.metrics.pipeline_duration.observe(time.monotonic() - started)
        log.info("incident %s (%s) processed: rule=%s members=%d evidence=%d", incident.id, incident.alertname,
                 incident.rule, len(members), gathered, extra={"incident": incident.id})

    async def members(self, job: Job, _: IncidentJob) -> None:
        """Members joined or resolved: tell the sinks, and queue a refresh of the evidence if the rule asks
        for one (one waiting refresh gathers for every member that joins before it runs)."""
        incident = await self._incident(job)
        follow_ups = self._events(INCIDENT_MEMBERS, incident, IncidentEvent(incident=IncidentView.of(incident)))
        refresh = next((r.refresh for r in self.ruleset.by_names(incident.rule) if r.refresh is not None), None)
        joined = 0
        if refresh is not None and incident.processed_at is not None and incident.status is IncidentStatus.OPEN:
            processed_at = incident.processed_at
            joined = sum(1 for m in await self.store.members(incident.id) if m.first_seen > processed_at)
        if not joined or refresh is None or incident.processed_at is None:
            await self.store.queue.finish(job, result={"members": incident.members_total}, follow_ups=follow_ups)
            return
        delay = max(0.0, incident.processed_at + refresh.min_interval - time.time())
        key = f"refresh:{incident.id}"

        async def writes(conn: Connection) -> None:
            if not await self.store.queue.queued(conn, PIPELINE_QUEUE, key, REFRESH.name):
                await self.store.queue.enqueue(conn, REFRESH.new(key, RefreshJob(), incident_id=incident.id),
                                               delay=delay)

        await self.store.queue.finish(job, result={"members": incident.members_total, "refresh_in_s": delay},
                                      writes=writes, follow_ups=follow_ups)

    async def refresh(self, job: Job, request: RefreshJob) -> None:
        """Gather the evidence again (a console button, or members that joined when the rule asks for it):
        the rule's collectors run again for the group as it is now, and nothing else (no mitigation is
        decided twice); the new evidence is stored and told to the thread."""
        incident = await self._incident(job)
        if request.requested_by is None and incident.status is IncidentStatus.RESOLVED:
            await self.store.queue.finish(job, result={"skipped": "the incident resolved"})
            return
        incident, alert, firing = group_view(incident, await self.store.members(incident.id))
        gathered: list[tuple[str, list[Evidence]]] = []
        for rule in self.ruleset.by_names(incident.rule):
            collectors, _, _ = render_steps(rule, alert, firing)
            gathered.append((rule.name, await self._collect(incident, collectors)))
        count = sum(len(evidence) for _, evidence in gathered)
        why = "Diagnostics re-run" if request.requested_by else f"New alerts joined ({len(firing)} firing)"

        async def writes(conn: Connection) -> None:
            ids = await self.store.save_processing(conn, incident.id, incident.labels, incident.error,
                                                   [(r, ev) for r, evidence in gathered for ev in evidence])
            bundles = []
            for rule, evidence in gathered:
                mine, ids = ids[:len(evidence)], ids[len(evidence):]
                bundles.append(Bundle(rule=rule, evidence_ids=mine))
            note = Note(kind="rerun", text=f"{why}: {count} result(s)", by=request.requested_by,
                        bundles=bundles)
            for queue in self.sink_queues:
                await self.store.queue.enqueue(conn, INCIDENT_NOTE.new(f"incident:{incident.id}", note,
                                                                       incident_id=incident.id, queue=queue))

        await self.store.queue.finish(job, result={"evidence": count}, writes=writes)

    async def resolve(self, job: Job, _: IncidentJob) -> None:
        incident = await self._incident(job)
        event = IncidentEvent(incident=IncidentView.of(incident))
        await self.store.queue.finish(job, result={"resolved": True},
                                      follow_ups=self._events(INCIDENT_RESOLVED, incident, event))
        self.metrics.incidents_resolved.labels(incident.rule or "").inc()
        log.info("incident %s (%s) resolved", incident.id, incident.alertname, extra={"incident": incident.id})

    def _events(self, kind: JobKind[IncidentEvent], incident: Incident, event: IncidentEvent) -> list[NewJob]:
        return [kind.new(f"incident:{incident.id}", event, incident_id=incident.id, queue=queue)
                for queue in self.sink_queues]
