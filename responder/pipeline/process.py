"""The incident job: match rules, gather evidence, decide on mitigations, queue sink events.

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
from responder.collectors.runner import EvidenceLimits, run_collectors
from responder.events import Bundle, IncidentEvent, IncidentView, Note
from responder.evidence import Evidence
from responder.jobs import (
    INCIDENT_NOTE,
    INCIDENT_PROCESSED,
    INCIDENT_RESOLVED,
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
from responder.models import Incident, Job, NewJob
from responder.redaction import Redactor
from responder.rules.engine import RuleSet, render_steps
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
    # Told about each piece of evidence as it arrives (replay shows progress with it).
    on_evidence: Callable[[Evidence], None] | None = None

    def register(self, table: JobTable) -> None:
        table.add(PROCESS, self.process)
        table.add(RESOLVE, self.resolve)
        table.add(REFRESH, self.refresh)

    async def _incident(self, job: Job) -> Incident:
        incident = await self.store.get_incident(job.incident_id) if job.incident_id is not None else None
        if incident is None:
            raise LookupError(f"incident {job.incident_id} of job {job.id} does not exist")
        return incident

    async def build_bundles(self, incident: Incident) -> list[tuple[Bundle, list[Evidence]]]:
        """Run every matched rule's collectors and mitigations for an incident: each rule's bundle (without
        its evidence) and the evidence gathered for it."""
        alert = incident.as_alert()
        bundles = []
        for rule in self.ruleset.match(alert):
            self.metrics.rule_matches.labels(rule.name).inc()
            collectors, mitigations, errors = render_steps(rule, alert)
            if errors:
                self.metrics.step_errors.labels(rule.name).inc(len(errors))
            evidence = await run_collectors(collectors, CollectorContext(incident, self.targets),
                                            limits=self.limits, redactor=self.redactor, metrics=self.metrics,
                                            on_evidence=self.on_evidence)
            decisions = await self.guard.run(rule, mitigations, incident, evidence)
            bundles.append((Bundle(
                rule=rule.name,
                decisions=[d.as_dict() for d in decisions],
                errors=[str(e) for e in errors],
                checklist=list(rule.checklist),
                channel=rule.slack.channel,
                alertmanager=rule.alertmanager,
            ), evidence))
        return bundles

    async def process(self, job: Job, _: IncidentJob) -> None:
        started = time.monotonic()
        incident = await self._incident(job)
        bundles = await self.build_bundles(incident)
        rule_names = ",".join(b.rule for b, _ in bundles) or None
        errors = "; ".join(e for b, _ in bundles for e in b.errors) or None
        gathered = sum(len(evidence) for _, evidence in bundles)
        if not bundles:
            self.metrics.unmatched.labels(incident.source).inc()
            log.info("incident %s (%s): no rule matched", incident.id, incident.alertname,
                     extra={"incident": incident.id})

        async def writes(conn: Connection) -> None:
            # The sink events name the evidence rows this transaction writes; they are queued with them.
            ids = await self.store.save_processing(conn, incident.id, rule_names, errors,
                                                   [(b.rule, ev) for b, evidence in bundles for ev in evidence])
            referenced = []
            for bundle, evidence in bundles:
                mine, ids = ids[:len(evidence)], ids[len(evidence):]
                referenced.append(bundle.model_copy(update={"evidence_ids": mine}))
            event = IncidentEvent(incident=IncidentView.of(incident, rule=rule_names, error=errors),
                                  bundles=referenced)
            for new in self._events(INCIDENT_PROCESSED, incident, event):
                await self.store.queue.enqueue(conn, new)

        await self.store.queue.finish(job, result={"rules": [b.rule for b, _ in bundles], "evidence": gathered},
                                      writes=writes)
        self.metrics.incidents_opened.labels(rule_names or "").inc()
        self.metrics.pipeline_duration.observe(time.monotonic() - started)
        log.info("incident %s (%s) processed: rules=%s evidence=%d", incident.id, incident.alertname,
                 rule_names, gathered, extra={"incident": incident.id})

    async def refresh(self, job: Job, request: RefreshJob) -> None:
        """Re-run diagnostics (a console button): the matched rules' collectors run again, and nothing else
        (no mitigation is decided twice); the new evidence is stored and told to the thread."""
        incident = await self._incident(job)
        alert = incident.as_alert()
        gathered: list[tuple[str, list[Evidence]]] = []
        for rule in self.ruleset.match(alert):
            collectors, _, _ = render_steps(rule, alert)
            gathered.append((rule.name, await run_collectors(
                collectors, CollectorContext(incident, self.targets), limits=self.limits, redactor=self.redactor,
                metrics=self.metrics)))
        count = sum(len(evidence) for _, evidence in gathered)

        async def writes(conn: Connection) -> None:
            ids = await self.store.save_evidence(conn, incident.id,
                                                 [(r, ev) for r, evidence in gathered for ev in evidence])
            bundles = []
            for rule, evidence in gathered:
                mine, ids = ids[:len(evidence)], ids[len(evidence):]
                bundles.append(Bundle(rule=rule, evidence_ids=mine))
            note = Note(kind="rerun", text=f"Diagnostics re-run: {count} result(s)", by=request.requested_by,
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
