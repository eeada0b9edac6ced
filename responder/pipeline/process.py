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
from dataclasses import asdict, dataclass, field
from typing import Any

from responder.collectors.base import CollectorContext, Evidence
from responder.collectors.runner import EvidenceLimits, run_collectors
from responder.metrics import Metrics
from responder.mitigations.guard import Guard
from responder.models import NOTE_EVENT, Incident, Job, Note
from responder.redaction import Redactor
from responder.rules.engine import RuleSet, render_steps
from responder.store import NewJob, Store
from responder.store.db import Connection
from responder.targets import Targets

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Bundle:
    """What one matched rule produced for one incident."""

    rule: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    checklist: list[str] = field(default_factory=list)
    channel: str | None = None
    # The rule's `alertmanager` target, where silences from Slack go.
    alertmanager: str | None = None


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
    # Told about each piece of evidence as it arrives (replay shows progress with it).
    on_evidence: Callable[[Evidence], None] | None = None

    async def handle(self, job: Job) -> None:
        assert job.incident_id is not None
        incident = await self.store.get_incident(job.incident_id)
        if incident is None:
            raise LookupError(f"incident {job.incident_id} does not exist")
        if job.kind == "process":
            await self.process(job, incident)
        elif job.kind == "resolve":
            await self.resolve(job, incident)
        elif job.kind == "refresh":
            await self.refresh(job, incident)
        else:
            raise ValueError(f"unknown pipeline job kind {job.kind!r}")

    async def build_bundles(self, incident: Incident) -> list[Bundle]:
        """Run every matched rule's collectors and mitigations for an incident (also used by replay)."""
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
            bundles.append(Bundle(
                rule=rule.name,
                evidence=[e.as_dict() for e in evidence],
                decisions=[d.as_dict() for d in decisions],
                errors=[str(e) for e in errors],
                checklist=list(rule.checklist),
                channel=rule.slack.channel,
                alertmanager=rule.alertmanager,
            ))
        return bundles

    async def process(self, job: Job, incident: Incident) -> None:
        started = time.monotonic()
        bundles = await self.build_bundles(incident)
        rule_names = ",".join(b.rule for b in bundles) or None
        errors = "; ".join(e for b in bundles for e in b.errors) or None
        if not bundles:
            self.metrics.unmatched.labels(incident.source).inc()
            log.info("incident %s (%s): no rule matched", incident.id, incident.alertname,
                     extra={"incident": incident.id})

        async def writes(conn: Connection) -> None:
            await self.store.save_processing(
                conn, incident.id, rule_names, errors,
                evidence=[(b.rule, ev) for b in bundles for ev in b.evidence],
            )

        view = incident_view(incident) | {"rule": rule_names, "error": errors}
        event = {"incident": view, "bundles": [asdict(b) for b in bundles]}
        await self.store.finish_job(
            job,
            result={"rules": [b.rule for b in bundles], "evidence": sum(len(b.evidence) for b in bundles)},
            writes=writes,
            follow_ups=self._events("incident.processed", incident, event),
        )
        self.metrics.incidents_opened.labels(rule_names or "").inc()
        self.metrics.pipeline_duration.observe(time.monotonic() - started)
        log.info("incident %s (%s) processed: rules=%s evidence=%d", incident.id, incident.alertname,
                 rule_names, sum(len(b.evidence) for b in bundles), extra={"incident": incident.id})

    async def refresh(self, job: Job, incident: Incident) -> None:
        """Re-run diagnostics (a console button): the matched rules' collectors run again, and nothing else
        (no mitigation is decided twice); the new evidence is stored and told to the thread."""
        alert = incident.as_alert()
        bundles: list[dict[str, Any]] = []
        for rule in self.ruleset.match(alert):
            collectors, _, _ = render_steps(rule, alert)
            evidence = await run_collectors(collectors, CollectorContext(incident, self.targets), limits=self.limits,
                                            redactor=self.redactor, metrics=self.metrics)
            bundles.append({"rule": rule.name, "evidence": [e.as_dict() for e in evidence]})
        count = sum(len(b["evidence"]) for b in bundles)

        async def writes(conn: Connection) -> None:
            await self.store.save_evidence(conn, incident.id,
                                           [(b["rule"], ev) for b in bundles for ev in b["evidence"]])

        note = Note("rerun", f"Diagnostics re-run: {count} result(s)", by=job.payload.get("requested_by"),
                    bundles=bundles)
        await self.store.finish_job(job, result={"evidence": count}, writes=writes,
                                    follow_ups=self._events(NOTE_EVENT, incident, note.event()))

    async def resolve(self, job: Job, incident: Incident) -> None:
        event = {"incident": incident_view(incident)}
        await self.store.finish_job(job, result={"resolved": True},
                                    follow_ups=self._events("incident.resolved", incident, event))
        self.metrics.incidents_resolved.labels(incident.rule or "").inc()
        log.info("incident %s (%s) resolved", incident.id, incident.alertname, extra={"incident": incident.id})

    def _events(self, kind: str, incident: Incident, event: dict[str, Any]) -> list[NewJob]:
        return [NewJob(queue, kind, f"incident:{incident.id}", incident.id, event) for queue in self.sink_queues]
